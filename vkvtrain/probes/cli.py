"""``python -m vkvtrain probe [CONFIG.yaml] [--dotted.key VALUE ...]``: run the probe suite, write reports.

Examples::

    python -m vkvtrain probe eval/probes.yaml
    python -m vkvtrain probe eval/probes.yaml --model tiny://qwen2_5_vl --tasks fewshot,keypoints \\
        --prefix.mode generic --data.fewshot.n 2 --output_dir runs/probes_qwen

Every key of the YAML can be overridden with ``--<dotted.key> <value>`` (values are read as YAML);
``--model X`` replaces the model list by one model. Unknown keys fail naming the key.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vkvtrain.errors import RecipeError, VKVError
from vkvtrain.models.loading import load_mlm
from vkvtrain.probes.config import ProbeConfig, load_config
from vkvtrain.probes.encoder import VisionEncoder
from vkvtrain.probes.perception import read_perception_score
from vkvtrain.probes.report import input_embeds_correlation, model_names, write_reports
from vkvtrain.probes.suite import ProbeSuite


def parse_argv(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """``[config] --a.b v ...`` -> (config path or None, [(dotted, value)]). ``--a.b=v`` also works."""
    config: str | None = None
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise RecipeError(f"override {arg} has no value; write {arg} <value>")
            if key in ("config", "c"):
                config = value
            else:
                overrides.append((key, value))
        elif config is None:
            config = arg
        else:
            raise RecipeError(f"unexpected argument {arg!r}; give one config file and --dotted.key value overrides")
        i += 1
    return config, overrides


def run(cfg: ProbeConfig) -> dict[str, Path]:
    """Load each model, run the suite, write the reports; returns the written paths."""
    names = model_names(cfg.models)
    # perception scores are read (and checked) before any model is loaded
    scores = {name: read_perception_score(spec.perception_results, spec.spec)
              for name, spec in zip(names, cfg.models) if spec.perception_results}
    torch.manual_seed(cfg.seed)
    encoder = VisionEncoder(cfg.encoder, device=cfg.device) if cfg.encoder else None
    per_model, extras = {}, {}
    for name, spec in zip(names, cfg.models):
        mlm = load_mlm(spec.spec, dtype=spec.dtype, device_map=cfg.device, random_init=spec.random_init,
                       init_seed=spec.init_seed)
        suite = ProbeSuite(mlm, cfg, encoder, shuffle_seed=spec.shuffle_seed if spec.shuffle_tokens else None)
        per_model[name] = suite.run()
        extras[name] = suite.extras
        del mlm, suite
    correlation = input_embeds_correlation(per_model, scores)
    return write_reports(per_model, cfg.output_dir, correlation, extras)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vkvtrain probe``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "probe":  # vkvtrain.cli passes the subcommand along
        argv = argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        config, overrides = parse_argv(argv)
        cfg = load_config(config, overrides)
        paths = run(cfg)
    except VKVError as err:
        print(f"vkvtrain probe: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
