"""The outputs of ``vkvtrain compare``: compare.json, compare.md, compare.png and an optional W&B table.

compare.png: one panel per metric; per subtask (and macro, micro) every later run's difference to the first
as a dot with its bootstrap interval as a horizontal bar, a vertical line at 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vkvtrain.evaluation.config import WandbConfig
from vkvtrain.plots import pyplot as plt

TITLES = {"output_accuracy": "output accuracy", "probe_accuracy": "latent probe accuracy",
          "gap_all": "surfacing gap (probe right, output wrong)"}
PLOT_TITLES = {"output_accuracy": "output accuracy", "probe_accuracy": "probe accuracy", "gap_all": "surfacing gap"}


def percent(x: float | None) -> str:
    """A rate in [0, 1] as a percentage with one decimal; "-" for a missing value."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def difference_text(d: dict[str, Any]) -> str:
    """One paired difference to the base with its interval, in points: "+2.3 [-1.0, +5.5]"."""
    return f"{100 * d['difference']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def _p(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3g}" if x >= 1e-4 else "<1e-4")


def markdown(comparison: dict[str, Any]) -> str:
    """Per metric a table: subtask, n, each run's value, each later run's difference [interval], McNemar p."""
    runs = [r["label"] for r in comparison["runs"]]
    boot = comparison["bootstrap"]
    conf = f"{100 * boot['confidence']:g}%"
    lines = [
        "# Comparison with " + runs[0],
        "",
        f"- protocol: {comparison['protocol'].get('name', comparison['protocol'].get('mode'))}",
        "- resolution: " + ", ".join(f"{k}={v}" for k, v in comparison["resolution"].items()),
        "- runs: " + "; ".join(f"{r['label']} = {', '.join(r['folders'])}" for r in comparison["runs"]),
        f"- intervals: paired bootstrap ({boot['n_resamples']} resamples, seed {boot['seed']}, {conf}; questions "
        "paired by id, resampled within each subtask for macro and micro); p: exact McNemar (single-seed runs)",
    ]
    for metric, title in TITLES.items():
        rows = [r for r in comparison["rows"] if r["metric"] == metric]
        if not rows:
            continue
        head = ["subtask", "n", *(f"{label} %" for label in runs)]
        for label in runs[1:]:
            head += [f"{label} - {runs[0]} [{conf}]"] + (["McNemar p"] if metric == "output_accuracy" else [])
        lines += ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for row in rows:
            name = f"**{row['subtask']}**" if row["subtask"] in ("macro", "micro") else row["subtask"]
            cells = [name, str(row["n"]), *(percent(v) for v in row["values"])]
            for d in row["differences"][1:]:
                cells.append(difference_text(d))
                if metric == "output_accuracy":
                    cells.append(_p(d.get("mcnemar_p")))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(comparison: dict[str, Any], path: Path) -> None:
    """compare.png: per metric, each later run's per-subtask difference to the first with its interval."""
    metrics = [m for m in TITLES if any(r["metric"] == m for r in comparison["rows"])]
    labels = [r["label"] for r in comparison["runs"]]
    n_rows = max(len([r for r in comparison["rows"] if r["metric"] == m]) for m in metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.35 * n_rows + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = [r for r in comparison["rows"] if r["metric"] == metric]
        for k, label in enumerate(labels[1:], start=1):
            offset = (k - (len(labels) - 1) / 2 - 0.5) * 0.2
            ys = [i + offset for i in range(len(rows))]
            d = [r["differences"][k] for r in rows]
            mid = [100 * x["difference"] for x in d]
            err = [[100 * (x["difference"] - x["low"]) for x in d], [100 * (x["high"] - x["difference"]) for x in d]]
            ax.errorbar(mid, ys, xerr=err, fmt="o", capsize=3, label=f"{label} - {labels[0]}")
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [r["subtask"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("difference (points)")
        ax.set_title(PLOT_TITLES[metric], fontsize=10)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out: Path, comparison: dict[str, Any]) -> Path:
    """Write compare.json, compare.md and compare.png into ``out``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(comparison, indent=2, allow_nan=False) + "\n")
    (out / "compare.md").write_text(markdown(comparison))
    plot(comparison, out / "compare.png")
    return out


def table_rows(comparison: dict[str, Any]) -> tuple[list[Any], list[list[Any]]]:
    """(columns, rows) of the flat W&B table: one row per metric, subtask and compared run."""
    columns: list[Any] = ["metric", "subtask", "n", "run", "value", "reference", "difference", "low", "high", "mcnemar_p"]
    runs = [r["label"] for r in comparison["runs"]]
    rows = []
    for row in comparison["rows"]:
        for k, label in enumerate(runs):
            d = row["differences"][k] or {}
            rows.append([row["metric"], row["subtask"], row["n"], label, row["values"][k], runs[0],
                         d.get("difference"), d.get("low"), d.get("high"), d.get("mcnemar_p")])
    return columns, rows


def log_wandb(comparison: dict[str, Any], cfg: WandbConfig, key: str = "compare") -> None:
    """Log the comparison as one W&B Table (``wandb.mode: offline`` needs no network)."""
    import wandb  # imported only when a W&B run is asked for (it starts a service)

    columns, rows = table_rows(comparison)
    run = wandb.init(project=cfg.project, name=cfg.name, mode=cfg.mode, dir=cfg.save_dir,
                     config={"runs": comparison["runs"], "bootstrap": comparison["bootstrap"]})
    run.log({f"{key}/table": wandb.Table(columns=columns, data=rows)})
    run.finish()
