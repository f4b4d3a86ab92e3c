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

from vkvtrain.outcome import Outcome
from vkvtrain.outputs import check_writable_dir
from vkvtrain.probes.config import PRIMARY, ModelSpec, ProbeConfig


def probe(config: ProbeConfig, model: str | None = None) -> Outcome:
    """Run the probe suite (eval/PROBES.md) on each model; write probes.json, probes.csv, probes.md and heatmaps.

    Args:
        model: shorthand for one model (hub id, local folder or tiny://<family>) in place of the config's models.
    """
    if model is not None:
        config.models = [ModelSpec(spec=model)]
    check_writable_dir(config.output_dir, "output_dir")  # before any model loads
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    paths = run(config, results)
    figures = {}
    for name, per_task in results.items():
        best = []
        for task, metrics in per_task.items():
            values = {row: v for row, v in metrics.get(PRIMARY[task], {}).items() if not math.isnan(v)}
            if values:
                row = max(values, key=values.__getitem__)
                best.append(f"{task}.{PRIMARY[task]} {values[row]:.3f} ({_row_name(row)})")
        figures[f"{name}: best row per task"] = "; ".join(best) or "no finite value"
    return Outcome(title=f"probe ({len(config.models)} model(s), {len(config.tasks)} task(s))",
                   outputs={kind: str(path) for kind, path in paths.items()}, figures=figures)


def _row_name(row: str) -> str:
    """Row keys of the suite: ``embeds`` (LM input embeddings), ``vision`` (vision tower) or an LM layer index."""
    return row if row in ("embeds", "vision") else f"LM layer {row}"


def run(cfg: ProbeConfig, results: dict[str, Any] | None = None) -> dict[str, Path]:
    """Load each model, run the suite, write the reports; returns the written paths (``results``, when given,
    receives ``{model name: {task: {metric: {row: value}}}}``)."""
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
    if results is not None:
        results.update(per_model)
    correlation = layer0_correlation(per_model, scores) if scores else None
    return write_reports(per_model, cfg.output_dir, correlation, extras)
