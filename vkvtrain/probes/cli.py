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

from vkvtrain.errors import RecipeError, VKVError
from vkvtrain.probes.config import ProbeConfig, load_config


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
    import torch

    from vkvtrain import load_mlm
    from vkvtrain.probes.encoder import VisionEncoder
    from vkvtrain.probes.report import layer0_correlation, model_names, write_reports
    from vkvtrain.probes.suite import ProbeSuite

    torch.manual_seed(cfg.seed)
    encoder = VisionEncoder(cfg.encoder, device=cfg.device) if cfg.encoder else None
    per_model, extras, scores = {}, {}, {}
    for name, spec in zip(model_names(cfg.models), cfg.models):
        mlm = load_mlm(spec.spec, dtype=spec.dtype, random_init=spec.random_init, init_seed=spec.init_seed)
        mlm.model.to(cfg.device)
        suite = ProbeSuite(mlm, cfg, encoder)
        per_model[name] = suite.run()
        extras[name] = suite.extras
        if spec.perception_score is not None:
            scores[name] = spec.perception_score
        del mlm, suite
    correlation = layer0_correlation(per_model, scores) if scores else None
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
