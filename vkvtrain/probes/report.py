"""Probe-suite reports: row x task tables (JSON, CSV, markdown), heatmaps, and the input-embedding correlation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from vkvtrain.plots import close, heatmap_figure
from vkvtrain.probes.config import ModelSpec
from vkvtrain.probes.features import INPUT_EMBEDS
from vkvtrain.probes.perception import PerceptionScore
from vkvtrain.probes.tasks import REGISTRY

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # task -> metric -> row -> value

#: models with a perception score the correlation needs
MIN_SCORED_MODELS = 3


def _primary(task: str) -> str | None:
    return REGISTRY[task].primary if task in REGISTRY else None


def rows_of(results: Results) -> list[str]:
    """Row names in first-seen order."""
    rows: list[str] = []
    for metrics in results.values():
        for values in metrics.values():
            rows += [r for r in values if r not in rows]
    return rows


def columns_of(results: Results) -> list[str]:
    """``task.metric`` columns, the primary metric of each task first."""
    cols = []
    for task, metrics in results.items():
        keys = sorted(metrics, key=lambda k: (k != _primary(task), k))
        cols += [f"{task}.{k}" for k in keys]
    return cols


def _primary_columns(results: Results) -> list[str]:
    return [f"{t}.{_primary(t)}" for t in results if _primary(t) in results[t]]


def _value(results: Results, col: str, row: str) -> float:
    task, key = col.split(".", 1)
    return float(results[task][key].get(row, math.nan))


def input_embeds_correlation(per_model: Mapping[str, Results], scores: Mapping[str, PerceptionScore],
                             row: str = INPUT_EMBEDS) -> dict[str, Any]:
    """Pearson and Spearman correlation (scipy), across models, of each perception task's primary score on
    the input-embedding row (the projector output; the paper's "layer 0") and of their mean, with the models'
    perception scores (BLINK macro accuracy read from ``vkvtrain evaluate`` results).

    With fewer than :data:`MIN_SCORED_MODELS` scored models the table is omitted and ``omitted`` says why; a
    task with fewer finite values gets a ``note`` instead of coefficients.
    """
    # scipy is imported only here: the correlation is the one place the reports need it
    models = [m for m in per_model if m in scores]
    out: dict[str, Any] = {"row": row, "models": models, "scores": {m: scores[m].as_dict() for m in models}}
    unscored = [m for m in per_model if m not in scores]
    if len(models) < MIN_SCORED_MODELS:
        out["omitted"] = (f"{len(models)} model(s) have a perception score, the correlation needs >= "
                          f"{MIN_SCORED_MODELS}; give each model perception_results: the results.json of a "
                          f"`vkvtrain evaluate` run of that model" + (f" (none for: {', '.join(unscored)})"
                                                                      if unscored else ""))
        return out
    per_task: dict[str, list[float]] = {}
    for task in next(iter(per_model.values()), {}):
        if task in REGISTRY and REGISTRY[task].correlates:
            per_task[task] = [float(per_model[m][task][REGISTRY[task].primary].get(row, math.nan)) for m in models]
    if per_task:
        per_task["mean"] = [sum(v[i] for v in per_task.values()) / len(per_task) for i in range(len(models))]
    tasks: dict[str, Any] = {}
    for task, xs in per_task.items():
        pairs = [(x, scores[m].value) for x, m in zip(xs, models) if math.isfinite(x)]
        entry: dict[str, Any] = {"input_embeds": xs}
        if len(pairs) < MIN_SCORED_MODELS:
            entry["note"] = f"needs >= {MIN_SCORED_MODELS} models with a finite {row} value, got {len(pairs)}"
        else:
            a, b = [p[0] for p in pairs], [p[1] for p in pairs]
            if len(set(a)) < 2 or len(set(b)) < 2:
                entry["note"] = "constant input; correlation undefined"
            else:
                pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
                entry.update(pearson=float(pr.statistic), pearson_p=float(pr.pvalue),
                             spearman=float(sr.statistic), spearman_p=float(sr.pvalue))
        tasks[task] = entry
    out["tasks"] = tasks
    return out


def _fmt(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:.3f}"


def markdown(per_model: Mapping[str, Results], correlation: Mapping[str, Any] | None = None) -> str:
    """One row x task table per model (primary metrics), then the input-embedding correlation (or why not)."""
    lines = ["# Probe results", "",
             f"Rows: `{INPUT_EMBEDS}` = LM input embeddings (projector output; the paper's \"layer 0\"), "
             "`0`..`n-1` = LM decoder layers (transformers index), `vision` / `encoder` = vision features.", ""]
    for model, results in per_model.items():
        cols = _primary_columns(results)
        lines += [f"## {model}", "", "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row in rows_of(results):
            lines.append(f"| {row} | " + " | ".join(_fmt(_value(results, c, row)) for c in cols) + " |")
        lines.append("")
    if correlation:
        lines += [f"## Input embeddings (row `{correlation['row']}`) vs perception score across models", ""]
        if "omitted" in correlation:
            lines += [f"Omitted: {correlation['omitted']}.", ""]
        else:
            lines += ["| task | pearson | spearman | note |", "|---|---|---|---|"]
            for task, entry in correlation["tasks"].items():
                lines.append(f"| {task} | {_fmt(entry.get('pearson', math.nan))} | "
                             f"{_fmt(entry.get('spearman', math.nan))} | {entry.get('note', '')} |")
            lines += ["", "Perception scores (BLINK macro accuracy):", ""]
            lines += [f"- {m}: {100 * s['value']:.1f} ({s['n']} questions) from `{s['source']}`"
                      for m, s in correlation["scores"].items()]
        lines.append("")
    return "\n".join(lines)


def heatmap(results: Results, path: Path, title: str) -> Path:
    """A row x task heatmap of the primary metrics, saved as PNG."""
    cols = _primary_columns(results)
    rows = rows_of(results)
    data = np.array([[_value(results, c, r) for c in cols] for r in rows], dtype=float)
    fig = heatmap_figure(data, rows, cols, title,
                         row_title=f"row ({INPUT_EMBEDS} = projector output; numbers = LM layers)")
    fig.savefig(path, dpi=100)
    close(fig)
    return path


def write_reports(per_model: Mapping[str, Results], out_dir: str | Path,
                  correlation: Mapping[str, Any] | None = None,
                  extras: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``probes.json``, ``probes.csv``, ``probes.md`` and ``heatmap_<i>_<model>.png``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "probes.json", "csv": out / "probes.csv", "md": out / "probes.md"}
    payload = {"results": per_model, "correlation": correlation, "extras": extras or {}}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=True))
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        all_cols: list[str] = []
        for results in per_model.values():
            all_cols += [c for c in columns_of(results) if c not in all_cols]
        writer.writerow(["model", "row", *all_cols])
        for model, results in per_model.items():
            for row in rows_of(results):
                writer.writerow([model, row, *[
                    f"{_value(results, c, row):.6g}" if c.split('.', 1)[0] in results else "" for c in all_cols]])
    paths["md"].write_text(markdown(per_model, correlation))
    for i, (model, results) in enumerate(per_model.items()):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model)
        paths[f"heatmap:{model}"] = heatmap(results, out / f"heatmap_{i}_{safe}.png", model)
    return paths


def model_names(specs: Sequence[ModelSpec]) -> list[str]:
    """Unique display names (each spec's ``display_name``; duplicates get a ``#n`` suffix)."""
    names: list[str] = []
    for s in specs:
        base = s.display_name
        name, n = base, 2
        while name in names:
            name, n = f"{base}#{n}", n + 1
        names.append(name)
    return names
