"""``python -m vkvtrain probe [CONFIG.yaml] [--dotted.key VALUE ...]``: run the probe suite, write reports.

Examples::

    python -m vkvtrain probe eval/probes.yaml
    python -m vkvtrain probe eval/probes.yaml --model tiny://qwen2_5_vl --tasks [fewshot,keypoints] \\
        --prefix.mode generic --data.fewshot.n 2 --output_dir runs/probes_qwen

Every key of the YAML can be overridden with ``--<dotted.key> <value>`` (values are YAML; a list also by
repeating its key: ``--tasks fewshot --tasks keypoints``); ``--model X`` replaces the model list by one model.
Unknown keys fail naming the key (vkvtrain.arguments parses every command the same way).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vkvtrain.models.loading import load_mlm
from vkvtrain.outcome import Outcome
from vkvtrain.outputs import check_writable_dir
from vkvtrain.probes.config import ModelSpec, ProbeConfig
from vkvtrain.probes.encoder import VisionEncoder
from vkvtrain.probes.perception import read_perception_score
from vkvtrain.probes.report import input_embeds_correlation, model_names, write_reports
from vkvtrain.probes.suite import ProbeSuite
from vkvtrain.probes.tasks import REGISTRY

Results = dict[str, dict[str, dict[str, dict[str, float]]]]  # model -> task -> metric -> row -> value


def probe(config: ProbeConfig, model: str | None = None) -> Outcome:
    """Run the probe suite (eval/PROBES.md) on each model; write probes.json, probes.csv, probes.md and heatmaps.

    Args:
        model: shorthand for one model (hub id, local folder or tiny://<family>) in place of the config's models.
    """
    if model is not None:
        config.models = [ModelSpec(spec=model)]
    check_writable_dir(config.output_dir, "output_dir")  # before any model loads
    results: Results = {}
    paths = run(config, results)
    figures = {}
    for name, per_task in results.items():
        best = []
        for task, metrics in per_task.items():
            primary = REGISTRY[task].primary
            values = {row: v for row, v in metrics.get(primary, {}).items() if not math.isnan(v)}
            if values:
                row = max(values, key=values.__getitem__)
                best.append(f"{task}.{primary} {values[row]:.3f} ({_row_name(row)})")
        figures[f"{name}: best row per task"] = "; ".join(best) or "no finite value"
    return Outcome(title=f"probe ({len(config.models)} model(s), {len(config.tasks)} task(s))",
                   outputs={kind: str(path) for kind, path in paths.items()}, figures=figures)


def _row_name(row: str) -> str:
    """Row keys of the suite: an LM layer index, or a named baseline (``input_embeds``, ``vision``, ``encoder``)."""
    return f"LM layer {row}" if row.isdigit() else row


def run(cfg: ProbeConfig, results: Results | None = None) -> dict[str, Path]:
    """Load each model, run the suite, write the reports; returns the written paths (``results``, when given,
    receives ``{model name: {task: {metric: {row: value}}}}``)."""
    names = model_names(cfg.models)
    # perception scores are read (and checked) before any model is loaded
    scores = {name: read_perception_score(spec.perception_results, spec.spec)
              for name, spec in zip(names, cfg.models) if spec.perception_results}
    torch.manual_seed(cfg.seed)
    encoder = VisionEncoder(cfg.encoder, device=cfg.device) if cfg.encoder else None
    per_model: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for name, spec in zip(names, cfg.models):
        mlm = load_mlm(spec.spec, dtype=spec.dtype, device_map=cfg.device, random_init=spec.random_init,
                       init_seed=spec.init_seed)
        suite = ProbeSuite(mlm, cfg, encoder, shuffle_seed=spec.shuffle_seed if spec.shuffle_tokens else None)
        per_model[name] = suite.run()
        extras[name] = suite.extras
        del mlm, suite
    if results is not None:
        results.update(per_model)
    correlation = input_embeds_correlation(per_model, scores)
    return write_reports(per_model, cfg.output_dir, correlation, extras)
