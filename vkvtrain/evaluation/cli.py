"""``python -m vkvtrain evaluate eval/blink.yaml [--model M] [--ckpt_path P] [--data.root DIR] ...``

Parses a YAML config plus dotted overrides into :class:`EvalConfig` (unknown keys fail naming the key),
loads the model (and a trained checkpoint's interventions), loads the questions, evaluates and writes
results.json, responses.jsonl and results.md into ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from vkvtrain.checkpointing import build_intervention, restore_into
from vkvtrain.errors import RecipeError, VKVError
from vkvtrain.evaluation.config import EvalConfig
from vkvtrain.interventions import attach_interventions, calibrate_interventions, prompt_prefix


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="python -m vkvtrain evaluate",
        description="Evaluate a base model or a trained checkpoint on BLINK (see eval/README.md).",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (also accepted positionally)")
    parser.add_class_arguments(EvalConfig, as_group=False)
    return parser


def parse_config(argv: Sequence[str]) -> EvalConfig:
    """argv (without the subcommand) -> EvalConfig. A first argument without a dash is the config file."""
    from jsonargparse import ArgumentError

    args = list(argv)
    if args and args[0] == "evaluate":
        args = args[1:]
    if args and not args[0].startswith("-"):
        if not Path(args[0]).is_file():
            raise RecipeError(f"config file {args[0]} does not exist")
        args = ["--config", *args]
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
        cfg = parser.instantiate(ns)
    except (ArgumentError, ValueError, TypeError) as error:
        if isinstance(error, VKVError):
            raise
        raise RecipeError(f"invalid evaluate config: {error}".strip()) from error
    cfg.pop("config", None)
    if hasattr(cfg, "as_dict"):
        cfg = cfg.as_dict()
    return EvalConfig(**{k: v for k, v in dict(cfg).items() if k != "__path__"})


def load_questions(cfg: EvalConfig) -> list[Any]:
    from vkvtrain.data.blink import load_blink
    from vkvtrain.data.synthetic_blink import synthetic_blink_questions

    d = cfg.data
    if d.root is not None or d.source == "local":
        if d.root is None:
            raise RecipeError("data.source=local needs data.root (a folder with one sub-folder per subtask)")
        return load_blink(d.subtasks, d.split, root=d.root, limit=d.limit)
    if d.source == "synthetic":
        n = d.synthetic_n if d.limit is None else min(d.synthetic_n, d.limit)
        return synthetic_blink_questions(n, d.synthetic_seed, d.subtasks, d.synthetic_image_size, d.split)
    return load_blink(d.subtasks, d.split, hub_id=d.hub_id, revision=d.revision, limit=d.limit)


def apply_checkpoint(mlm: Any, ckpt_path: str) -> str | None:
    """Restore a trained checkpoint's interventions into ``mlm`` (vkvtrain.checkpointing.restore_into).

    Returns the text its interventions need right before the images (a learned prefix's placeholders), or None.
    """
    if not Path(ckpt_path).exists():
        raise RecipeError(f"ckpt_path {ckpt_path} does not exist")
    return prompt_prefix(restore_into(mlm, ckpt_path))


def resolve_model(cfg: EvalConfig) -> str:
    """The model to load: ``cfg.model``, else the model the checkpoint was trained on."""
    trained_on = None
    if cfg.ckpt_path:
        from vkvtrain.checkpointing import CHECKPOINT_KEY, read_checkpoint

        trained_on = read_checkpoint(cfg.ckpt_path)[CHECKPOINT_KEY].get("model")
    if cfg.model is None:
        if trained_on is None:
            raise RecipeError("no model to evaluate: pass --model (hub id, local folder or tiny://<family>) "
                              "or --ckpt_path of a vkvtrain training checkpoint")
        return str(trained_on)
    if trained_on is not None and cfg.model != trained_on:
        print(f"note: {cfg.ckpt_path} was trained on {trained_on}; its interventions are applied to {cfg.model}",
              file=sys.stderr)
    return cfg.model


def apply_interventions(mlm: Any, cfg: EvalConfig, questions: Sequence[Any]) -> list[dict[str, Any]]:
    """Attach ``cfg.interventions`` to ``mlm``, calibrating those that pick positions from data.

    Returns, per intervention, its class path, init args and (when it has them) the blocked positions, so
    results.json says exactly what was applied.
    """
    from vkvtrain.evaluation.scoring import prompts_for

    for spec in cfg.interventions:
        if "class_path" not in spec:
            raise RecipeError(f"interventions entry {spec} needs a class_path (and optional init_args), as in recipes")
    # the config is the user's own file: the classes it names are trusted
    interventions = [build_intervention(spec, trusted=[spec["class_path"]]) for spec in cfg.interventions]
    attach_interventions(mlm, interventions)
    if any(iv.needs_calibration for iv in interventions):
        calibration = list(questions[: cfg.calibration_questions])
        batches = [mlm.encode(prompts_for(calibration[i: i + cfg.batch_size], cfg.prompt)).to(mlm.device)
                   for i in range(0, len(calibration), cfg.batch_size)]
        calibrate_interventions(mlm, interventions, batches)
    if (text := prompt_prefix(interventions)):
        cfg.prompt.prefix = (cfg.prompt.prefix or "") + text
    return [intervention.record() for intervention in interventions]


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate as configured; returns the results dict (also written to cfg.output_dir)."""
    import torch

    from vkvtrain import load_mlm
    from vkvtrain.evaluation.blink import EvalOptions, evaluate_blink
    from vkvtrain.evaluation.report import log_wandb, write_outputs

    cfg.model = resolve_model(cfg)
    questions = load_questions(cfg)  # data errors surface before the (slow) model load
    if not questions:
        raise RecipeError("no BLINK questions selected; check data.subtasks and data.limit")
    mlm = load_mlm(cfg.model, dtype=cfg.dtype)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    mlm.model.to(device)
    if cfg.ckpt_path:
        learned = apply_checkpoint(mlm, cfg.ckpt_path)
        if learned:  # the learned prefix sits right before the images, after any configured prefix text
            cfg.prompt.prefix = (cfg.prompt.prefix or "") + learned
    applied = apply_interventions(mlm, cfg, questions)
    options = EvalOptions(
        mode=cfg.mode, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, prompt=cfg.prompt,
        probes=cfg.probes,
    )
    records, results = evaluate_blink(mlm, questions, options, progress=cfg.progress)
    results["model"] = cfg.model
    results["ckpt_path"] = cfg.ckpt_path
    results["interventions"] = applied
    results["config"] = dataclasses.asdict(cfg)  # the resolved run configuration, prompt protocol included
    out = write_outputs(cfg.output_dir, results, records)
    if cfg.wandb.project:
        import wandb

        run_ = wandb.init(
            project=cfg.wandb.project, name=cfg.wandb.name, mode=cfg.wandb.mode, dir=cfg.wandb.save_dir,
            config=dataclasses.asdict(cfg),
        )
        log_wandb(results, run_)
        run_.finish()
    print((out / "results.md").read_text())
    macro = results["macro"]
    print(f"BLINK macro {100 * macro:.1f}" if macro is not None else "BLINK: no gold answers", f"-> {out}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point used by ``python -m vkvtrain evaluate``; returns the exit code."""
    try:
        run(parse_config(sys.argv[1:] if argv is None else argv))
        return 0
    except VKVError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
