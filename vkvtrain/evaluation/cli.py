"""``python -m vkvtrain evaluate eval/blink.yaml [--model M] [--ckpt_path P] [--data.root DIR] ...``

The config (positional or -c/--config) plus dotted overrides is parsed into :class:`EvalConfig` by vkvtrain's
one parser (vkvtrain.arguments: unknown keys fail naming the key). The run loads the model (and a trained
checkpoint's interventions), loads the questions, evaluates and writes results.json, responses.jsonl and
results.md into ``output_dir``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from vkvtrain.arguments import parse_call
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.config import EvalConfig
from vkvtrain.evaluation.protocol import LMMS_EVAL_PRE_PROMPT
from vkvtrain.outcome import Outcome
from vkvtrain.outputs import check_writable_dir


def evaluate(config: EvalConfig) -> Outcome:
    """Evaluate a base model or a trained checkpoint on BLINK (eval/README.md documents every key).

    Writes results.json, responses.jsonl and results.md into output_dir; with wandb.project set, also a W&B run.
    """
    check_writable_dir(config.output_dir, "output_dir")  # before the (slow) model load
    if config.wandb.project and config.wandb.save_dir:
        check_writable_dir(config.wandb.save_dir, "wandb.save_dir")
    results = run(config)
    out = Path(config.output_dir)
    figures = {}
    if results.get("macro") is not None:
        figures[f"BLINK {config.data.split}"] = (
            f"macro {100 * results['macro']:.1f}, micro {100 * results['micro']:.1f} over {results['n']} questions "
            f"({protocol_name(config)})"
        )
    else:
        figures[f"BLINK {config.data.split}"] = f"no gold answers to score ({results['n']} questions answered)"
    return Outcome(
        title=f"evaluate {config.model}" + (f" with {config.ckpt_path}" if config.ckpt_path else ""),
        outputs={name: str(out / name) for name in ("results.json", "responses.jsonl", "results.md")},
        figures=figures,
    )


def protocol_name(config: EvalConfig) -> str:
    """How the numbers were obtained, in a few words (the protocol is documented in eval/README.md)."""
    prompt = config.prompt
    lmms = prompt.pre_prompt == LMMS_EVAL_PRE_PROMPT and prompt.post_prompt == "" and prompt.prefix is None
    words = "lmms-eval prompt" if lmms else "custom prompt"
    if config.mode == "generate":
        words += f", greedy generation (max {config.max_new_tokens} new tokens) read by the strict parser"
    else:
        words += f", likelihood ranking of '{prompt.continuation}' continuations ({prompt.length_norm} log-prob)"
    return "protocol: " + words


def parse_config(argv: Sequence[str]) -> EvalConfig:
    """argv (an optional leading ``evaluate`` dropped) -> EvalConfig, through vkvtrain's one parser."""
    args = list(argv)
    if args and args[0] == "evaluate":
        args = args[1:]
    (config,), _ = parse_call(evaluate, args, "python -m vkvtrain evaluate")
    return config


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
    try:
        from vkvtrain.checkpointing import prompt_prefix, restore_into
    except ImportError as error:
        raise RecipeError(
            "--ckpt_path needs vkvtrain.checkpointing.restore_into, which this installation does not provide "
            f"({error}); evaluate the base model, or update vkvtrain"
        ) from error
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
    from vkvtrain.checkpointing import build_intervention, prompt_prefix
    from vkvtrain.evaluation.scoring import prompts_for

    applied = []
    for spec in cfg.interventions:
        if "class_path" not in spec:
            raise RecipeError(f"interventions entry {spec} needs a class_path (and optional init_args), as in recipes")
        intervention = build_intervention(spec)
        intervention.attach(mlm)
        intervention.to(mlm.device)
        if getattr(intervention, "needs_calibration", False):
            calibration = list(questions[: cfg.calibration_questions])
            batches = [mlm.encode(prompts_for(calibration[i: i + cfg.batch_size], cfg.prompt)).to(mlm.device)
                       for i in range(0, len(calibration), cfg.batch_size)]
            intervention.calibrate(mlm, batches)
        if (text := prompt_prefix([intervention])):
            cfg.prompt.prefix = (cfg.prompt.prefix or "") + text
        record: dict[str, Any] = {"class_path": spec["class_path"], "init_args": intervention.init_args()}
        if hasattr(intervention, "blocked_positions"):
            record["blocked_positions"] = {str(k): v for k, v in intervention.blocked_positions().items()}
        applied.append(record)
    return applied


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
    return results
