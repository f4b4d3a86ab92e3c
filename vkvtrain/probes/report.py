"""Probe-suite reports: layer x task tables (JSON, CSV, markdown), heatmaps, and the layer-0 correlation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vkvtrain.plots import close, heatmap_figure
from vkvtrain.probes.config import PRIMARY

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # task -> metric -> row -> value


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
        keys = sorted(metrics, key=lambda k: (k != PRIMARY.get(task), k))
        cols += [f"{task}.{k}" for k in keys]
    return cols


def _value(results: Results, col: str, row: str) -> float:
    task, key = col.split(".", 1)
    return float(results[task][key].get(row, math.nan))


def layer0_correlation(per_model: Mapping[str, Results], scores: Mapping[str, float],
                       row: str = "embeds") -> dict[str, Any]:
    """Pearson and Spearman correlation, across models, of each task's primary layer-0 score (row
    ``embeds``: the input projection) and of their mean, with the models' perception scores.

    Needs >= 3 models with a score and a finite layer-0 value; otherwise the entry says why.
    """
    from scipy import stats

    models = [m for m in per_model if m in scores]
    out: dict[str, Any] = {"row": row, "models": models, "scores": [scores[m] for m in models]}
    per_task: dict[str, list[float]] = {}
    for task in next(iter(per_model.values()), {}):
        if task in PRIMARY and task != "key_agnosticism":
            per_task[task] = [float(per_model[m][task][PRIMARY[task]].get(row, math.nan)) for m in models]
    if per_task:
        per_task["mean"] = [sum(v[i] for v in per_task.values()) / len(per_task) for i in range(len(models))]
    for task, xs in per_task.items():
        pairs = [(x, scores[m]) for x, m in zip(xs, models) if math.isfinite(x)]
        entry: dict[str, Any] = {"layer0": xs}
        if len(pairs) < 3:
            entry["note"] = f"needs >= 3 models with a perception_score and a finite {row} value, got {len(pairs)}"
        else:
            a, b = [p[0] for p in pairs], [p[1] for p in pairs]
            if len(set(a)) < 2 or len(set(b)) < 2:
                entry["note"] = "constant input; correlation undefined"
            else:
                pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
                entry.update(pearson=float(pr.statistic), pearson_p=float(pr.pvalue),
                             spearman=float(sr.statistic), spearman_p=float(sr.pvalue))
        out[task] = entry
    return out


def _fmt(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:.3f}"


def markdown(per_model: Mapping[str, Results], correlation: Mapping[str, Any] | None = None) -> str:
    """One layer x task table per model (primary metrics), then the correlation table."""
    lines = ["# Probe results", ""]
    for model, results in per_model.items():
        cols = [f"{t}.{PRIMARY[t]}" for t in results if PRIMARY.get(t) in results[t]]
        lines += [f"## {model}", "", "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row in rows_of(results):
            lines.append(f"| {row} | " + " | ".join(_fmt(_value(results, c, row)) for c in cols) + " |")
        lines.append("")
    if correlation:
        lines += [f"## Layer-0 ({correlation['row']}) score vs perception score across models", "",
                  "| task | pearson | spearman | note |", "|---|---|---|---|"]
        for task, entry in correlation.items():
            if isinstance(entry, dict) and "layer0" in entry:
                lines.append(f"| {task} | {_fmt(entry.get('pearson', math.nan))} | "
                             f"{_fmt(entry.get('spearman', math.nan))} | {entry.get('note', '')} |")
        lines.append("")
    return "\n".join(lines)


def heatmap(results: Results, path: Path, title: str) -> Path:
    """A row x task heatmap of the primary metrics, saved as PNG."""
    cols = [f"{t}.{PRIMARY[t]}" for t in results if PRIMARY.get(t) in results[t]]
    rows = rows_of(results)
    data = np.array([[_value(results, c, r) for c in cols] for r in rows], dtype=float)
    fig = heatmap_figure(data, rows, cols, title, row_title="row (LM layer index, or a named baseline)")
    fig.savefig(path, dpi=100)
    close(fig)
    return path


def write_reports(per_model: Mapping[str, Results], out_dir: str | Path,
                  correlation: Mapping[str, Any] | None = None,
                  extras: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``probes.json``, ``probes.csv``, ``probes.md`` and ``heatmap_<model>.png``; returns the paths."""
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


def model_names(specs: Sequence[Any]) -> list[str]:
    """Unique display names (``name`` or ``spec``, marked when randomly initialised; duplicates get a ``#n``
    suffix)."""
    names: list[str] = []
    for s in specs:
        base = s.name or (f"{s.spec} (random init)" if getattr(s, "random_init", False) else s.spec)
        name, n = base, 2
        while name in names:
            name, n = f"{base}#{n}", n + 1
        names.append(name)
    return names
