"""``python -m vkvtrain evaluate eval/blink.yaml [--model M] [--ckpt_path P] [--data.root DIR] ...``

The config (positional or -c/--config) plus dotted overrides is parsed into :class:`EvalConfig` by vkvtrain's
one parser (vkvtrain.arguments: unknown keys fail naming the key). The run loads the questions, the model (with
the configured processor resolution, a trained checkpoint's interventions and the configured ones), evaluates
(sharded over processes with ``--devices N``) and writes results.json, responses.jsonl and results.md into
``output_dir``; every output names the protocol, the resolution settings and the data revision.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.fabric import Fabric
from lightning.fabric.utilities.rank_zero import rank_zero_only

from vkvtrain.arguments import parse_call
from vkvtrain.checkpointing import (
    CHECKPOINT_KEY,
    build_intervention,
    read_checkpoint,
    restore_into,
)
from vkvtrain.data.blink import BlinkLoad, read_blink
from vkvtrain.data.synthetic_blink import synthetic_blink_questions
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.blink import evaluate_blink
from vkvtrain.evaluation.config import EvalConfig
from vkvtrain.evaluation.report import describe, log_wandb, write_outputs
from vkvtrain.evaluation.scoring import prompts_for
from vkvtrain.evaluation.sharding import Shard
from vkvtrain.interventions import (
    Intervention,
    attach_interventions,
    calibrate_interventions,
    prompt_prefix,
)
from vkvtrain.mlm import MLM
from vkvtrain.models.loading import load_mlm
from vkvtrain.outcome import Outcome
from vkvtrain.outputs import check_writable_dir


def evaluate(config: EvalConfig) -> Outcome | None:
    """Evaluate a base model or a trained checkpoint on BLINK (eval/README.md documents every key).

    Writes results.json, responses.jsonl and results.md into output_dir; with wandb.project set, also a W&B run.
    """
    check_writable_dir(config.output_dir, "output_dir")  # before the (slow) model load
    if config.wandb.project and config.wandb.save_dir:
        check_writable_dir(config.wandb.save_dir, "wandb.save_dir")
    results = run(config)
    if getattr(rank_zero_only, "rank", 0) != 0:  # a process of a sharded run: rank 0 writes and reports
        return None
    out = Path(config.output_dir)
    if results.get("macro") is not None:
        score = f"macro {100 * results['macro']:.1f}, micro {100 * results['micro']:.1f} over {results['n']} questions"
    else:
        score = f"no gold answers to score ({results['n']} questions answered)"
    figures = {f"BLINK {config.data.split}": score}
    for line in describe(results):  # protocol, resolution, data
        label, _, text = line.partition(": ")
        figures[label] = text
    return Outcome(
        title=f"evaluate {config.model}" + (f" with {config.ckpt_path}" if config.ckpt_path else ""),
        outputs={name: str(out / name) for name in ("results.json", "responses.jsonl", "results.md")},
        figures=figures,
    )


def parse_config(argv: Sequence[str]) -> EvalConfig:
    """argv (an optional leading ``evaluate`` dropped) -> EvalConfig, through vkvtrain's one parser."""
    args = list(argv)
    if args and args[0] == "evaluate":
        args = args[1:]
    (config,), _ = parse_call(evaluate, args, "python -m vkvtrain evaluate")
    assert isinstance(config, EvalConfig)
    return config


def load_questions(cfg: EvalConfig) -> BlinkLoad:
    """The questions ``cfg.data`` selects, the subtasks they were loaded from, and a record of the source."""
    d = cfg.data
    if d.root is not None or d.source == "local":
        return read_blink(d.subtasks, d.split, root=d.root, limit=d.limit, skip_malformed=d.skip_malformed)
    if d.source == "synthetic":
        n = d.synthetic_n if d.limit is None else min(d.synthetic_n, d.limit)
        questions = synthetic_blink_questions(n, d.synthetic_seed, d.subtasks, d.synthetic_image_size, d.split)
        source = {"source": "synthetic", "generator": "vkvtrain.data.synthetic_blink", "split": d.split,
                  "revision": f"seed {d.synthetic_seed}, {n} per subtask, {d.synthetic_image_size} px"}
        return BlinkLoad(questions, list(dict.fromkeys(q.sub_task for q in questions)), source)
    return read_blink(d.subtasks, d.split, hub_id=d.hub_id, revision=d.revision, limit=d.limit,
                      skip_malformed=d.skip_malformed)


def calibrate(mlm: MLM, interventions: Sequence[Intervention], cfg: EvalConfig, questions: Sequence[Any]) -> None:
    """Let interventions that choose positions from data pick them on the first questions' images (answers
    unused)."""
    if not any(iv.needs_calibration for iv in interventions):
        return
    calibration = list(questions[: cfg.calibration_questions])
    batches = [mlm.encode(prompts_for(calibration[i: i + cfg.batch_size], cfg.prompt)).to(mlm.device)
               for i in range(0, len(calibration), cfg.batch_size)]
    calibrate_interventions(mlm, interventions, batches)


def applied_records(interventions: Sequence[Intervention], source: str) -> list[dict[str, Any]]:
    """Per intervention: where it came from and what was applied (class path, init args, chosen positions)."""
    return [{"source": source, **intervention.record()} for intervention in interventions]


def apply_checkpoint(mlm: MLM, cfg: EvalConfig, questions: Sequence[Any]) -> list[dict[str, Any]]:
    """Restore ``cfg.ckpt_path``'s interventions into ``mlm`` (vkvtrain.checkpointing.restore_into), calibrate
    those still without positions, and put a learned prefix before the images. Returns what was applied."""
    assert cfg.ckpt_path is not None
    if not Path(cfg.ckpt_path).exists():
        raise RecipeError(f"ckpt_path {cfg.ckpt_path} does not exist")
    interventions = restore_into(mlm, cfg.ckpt_path)
    calibrate(mlm, interventions, cfg, questions)
    if learned := prompt_prefix(interventions):  # right before the images, after any configured prefix text
        cfg.prompt.prefix = (cfg.prompt.prefix or "") + learned
    return applied_records(interventions, f"checkpoint {cfg.ckpt_path}")


def resolve_model(cfg: EvalConfig) -> str:
    """The model to load: ``cfg.model``, else the model the checkpoint was trained on."""
    trained_on = None
    if cfg.ckpt_path:
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


def apply_interventions(mlm: MLM, cfg: EvalConfig, questions: Sequence[Any]) -> list[dict[str, Any]]:
    """Attach ``cfg.interventions`` to ``mlm`` after any checkpoint's, calibrating those that pick positions
    from data. Returns what was applied, so results.json says exactly that."""
    # the config is the user's own file: the classes it names are trusted
    interventions = [build_intervention(spec, trusted=[str(spec.get("class_path"))]) for spec in cfg.interventions]
    attach_interventions(mlm, interventions)
    calibrate(mlm, interventions, cfg, questions)
    if text := prompt_prefix(interventions):
        cfg.prompt.prefix = (cfg.prompt.prefix or "") + text
    return applied_records(interventions, "config")


def _accelerator(cfg: EvalConfig) -> str:
    if cfg.device is None:
        return "auto"
    if cfg.device == "cpu" or cfg.device == "cuda":
        return cfg.device
    raise RecipeError(f"device={cfg.device!r} names one device; with devices={cfg.devices} give device: cuda or cpu")


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate as configured; returns the results dict (also written to cfg.output_dir by rank 0).

    With ``devices`` x ``num_nodes`` > 1 the questions are sharded over that many processes by Lightning Fabric
    (strategy ``cfg.strategy``); the results equal a single-process run.
    """
    cfg.model = resolve_model(cfg)
    check_writable_dir(cfg.output_dir, "output_dir")
    if cfg.devices * cfg.num_nodes == 1:
        return evaluate_shard(cfg, Shard(), None)
    fabric = Fabric(accelerator=_accelerator(cfg), devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy)
    return fabric.launch(functools.partial(_evaluate_process, cfg=cfg))  # picklable for ddp_spawn


def _evaluate_process(fabric: Any, cfg: EvalConfig) -> dict[str, Any]:
    return evaluate_shard(cfg, Shard.of(fabric), fabric.device)


def evaluate_shard(cfg: EvalConfig, shard: Shard, device: Any) -> dict[str, Any]:
    """One process's part of :func:`run`: load, answer its batches, gather; rank 0 writes the outputs."""
    assert cfg.model is not None
    loaded = load_questions(cfg)  # data errors surface before the (slow) model load
    questions = loaded.questions
    if not questions:
        raise RecipeError("no BLINK questions selected; check data.subtasks and data.limit")
    mlm = load_mlm(cfg.model, dtype=cfg.dtype)
    mlm.to(device or cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolution = cfg.resolution.apply(mlm)  # before calibration: positions depend on the image grids
    applied = apply_checkpoint(mlm, cfg, questions) if cfg.ckpt_path else []
    applied += apply_interventions(mlm, cfg, questions)
    records, results = evaluate_blink(mlm, questions, cfg, progress=cfg.progress and shard.is_main, shard=shard,
                                      subtasks=loaded.subtasks)
    results.update(
        model=cfg.model, ckpt_path=cfg.ckpt_path, protocol=cfg.protocol(), resolution=resolution,
        data=loaded.source, skipped=loaded.skipped, interventions=applied, processes=shard.world_size,
        config=dataclasses.asdict(cfg),  # the resolved run configuration, prompt protocol included
    )
    if not shard.is_main:
        return results
    out = write_outputs(cfg.output_dir, results, records)
    if cfg.wandb.project:
        import wandb  # imported only when a W&B run is asked for (it starts a service)

        run_ = wandb.init(
            project=cfg.wandb.project, name=cfg.wandb.name, mode=cfg.wandb.mode, dir=cfg.wandb.save_dir,
            config=dataclasses.asdict(cfg),
        )
        log_wandb(results, run_)
        run_.finish()
    print((out / "results.md").read_text())
    return results

