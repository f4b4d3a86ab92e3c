"""BLINK scores from per-question records, and the three output files (results.json, responses.jsonl, results.md).

Per subtask: accuracy (questions answered right / questions with a gold answer) and invalid rate (answers
the parser could not read / questions). Overall: ``macro`` = unweighted mean of the subtask accuracies
(BLINK's official score), ``micro`` = right / all questions pooled (what VLMEvalKit reports).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from vkvtrain.data.blink import BLINK_SUBTASKS
from vkvtrain.errors import DatasetError


def summarize(records: Sequence[dict[str, Any]], subtasks: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"subtasks": {name: {accuracy, n, invalid, n_correct, n_invalid}}, "macro", "micro", "n"}``.

    Records need ``sub_task`` (the subtask the question was loaded from), ``answer`` (gold letter or None),
    ``prediction`` (letter or None) and ``correct`` (bool). Questions without a gold answer count only in
    ``n_unscored``. subtasks: the subtasks the macro average is over (default: those in ``records``); one
    without records raises :class:`~vkvtrain.errors.DatasetError` naming it instead of leaving the average.
    """
    order = {s: i for i, s in enumerate(BLINK_SUBTASKS)}
    present = {r["sub_task"] for r in records}
    if subtasks is not None:
        empty = [name for name in subtasks if name not in present]
        if empty:
            raise DatasetError(
                f"no answered questions in subtask(s) {empty}: the macro average would silently leave them out; "
                "drop them from data.subtasks or check the data"
            )
        extra = sorted(present - set(subtasks))
        if extra:
            raise DatasetError(f"records of subtask(s) {extra} that were not loaded; results key on loaded subtasks")
    names = sorted(present, key=lambda s: (order.get(s, len(order)), s))
    table: dict[str, dict[str, Any]] = {}
    right = total = 0
    for name in names:
        rs = [r for r in records if r["sub_task"] == name]
        scored = [r for r in rs if r["answer"] is not None]
        n_correct = sum(bool(r["correct"]) for r in scored)
        n_invalid = sum(r["prediction"] is None for r in rs)
        table[name] = {
            "accuracy": n_correct / len(scored) if scored else None,
            "n": len(scored),
            "invalid": n_invalid / len(rs),
            "n_correct": n_correct,
            "n_invalid": n_invalid,
            "n_unscored": len(rs) - len(scored),
        }
        right += n_correct
        total += len(scored)
    accs = [v["accuracy"] for v in table.values() if v["accuracy"] is not None]
    return {
        "subtasks": table,
        "macro": sum(accs) / len(accs) if accs else None,
        "micro": right / total if total else None,
        "n": total,
    }


def _fmt(x: Any, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}" if pct else str(x)


def describe(results: dict[str, Any]) -> list[str]:
    """One line each for the protocol, the resolution settings and the data revision of ``results``."""
    protocol = results.get("protocol") or {}
    name = protocol.get("name", results.get("mode", "?"))
    if "max_new_tokens" in protocol:
        name += f", max_new_tokens {protocol['max_new_tokens']}"
    resolution = results.get("resolution") or {}
    settings = ", ".join(f"{k}={v}" for k, v in resolution.items() if k != "family") or "processor defaults"
    data = results.get("data") or {}
    where = data.get("hub_id") or data.get("root") or data.get("generator") or "?"
    return [
        f"protocol: {name}",
        f"resolution ({resolution.get('family', '?')}): {settings}",
        f"data: {data.get('source', '?')} {where} split {data.get('split', '?')}, revision {data.get('revision', '?')}",
    ]


def headline(results: dict[str, Any]) -> str:
    """The one-line summary printed at the end of a run: macro accuracy and what produced it."""
    macro = results.get("macro")
    score = f"BLINK macro {100 * macro:.1f}" if macro is not None else "BLINK: no gold answers"
    return f"{score} ({'; '.join(describe(results))})"


def markdown(results: dict[str, Any]) -> str:
    """A markdown report: what produced it, the subtask table, then the latent surfacing table when present."""
    lines = [
        f"# BLINK results ({results.get('mode', '?')} mode, model {results.get('model', '?')})",
        "",
        *(f"- {line}" for line in describe(results)),
        "",
        "| subtask | n | accuracy % | invalid % |",
        "|---|---:|---:|---:|",
    ]
    for name, v in results["subtasks"].items():
        lines.append(f"| {name} | {v['n']} | {_fmt(v['accuracy'])} | {_fmt(v['invalid'])} |")
    lines.append(f"| **macro (official)** | {results['n']} | {_fmt(results['macro'])} | |")
    lines.append(f"| **micro (VLMEvalKit)** | {results['n']} | {_fmt(results['micro'])} | |")
    skipped = results.get("skipped") or []
    if skipped:
        lines += ["", f"Skipped (data.skip_malformed): {len(skipped)}"]
        lines += [f"- {s['subtask']} {s['idx'] or '(whole subtask)'}: {s['reason']}" for s in skipped]
    latent = results.get("latent")
    if latent and latent.get("subtasks"):
        lines += [
            "",
            f"## Latent vs output (layer: {latent['layer_selection']})",
            "",
            "Share of questions where the value-token probe is right and the output is wrong.",
            "",
            "| subtask | layer | n | output acc % | probe acc % | probe right & output wrong, % of all | % of wrong |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in latent["subtasks"].items():
            lines.append(
                f"| {name} | {_fmt(v['layer'], False)} | {v['n']} | {_fmt(v['output_accuracy'])} | "
                f"{_fmt(v['probe_accuracy'])} | {_fmt(v['gap_all'])} | {_fmt(v['gap_wrong'])} |"
            )
        unchosen = [name for name, v in latent["subtasks"].items() if v["layer"] is None]
        if unchosen and latent["layer_selection"] == "heldout":
            lines += ["", f"No held-out questions to choose a layer on in: {', '.join(unchosen)}. Evaluate more "
                      "questions or fix the layer (probes.probe_layer); per-layer numbers are in results.json."]
    markers = results.get("markers")
    if markers:
        lines += [
            "",
            "## Point markers read from the pixels",
            "",
            "Questions without coordinates whose drawn markers were located (the point probes use them); a "
            "question whose markers are not all found is left without a point probe (reasons in results.json).",
            "",
            "| subtask | questions | located | not found |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {name} | {v['questions']} | {v['located']} | {v['not_found']} |" for name, v in markers.items()]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str | Path, results: dict[str, Any], records: Sequence[dict[str, Any]]) -> Path:
    """Write results.json, responses.jsonl (one record per question) and results.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")
    with open(out / "responses.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(_clean(r), allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown(results))
    return out


def _clean(x: Any) -> Any:
    """NaN -> None (JSON null), recursively; strict JSON readers reject NaN."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def log_wandb(results: dict[str, Any], logger: Any, key: str = "blink") -> None:
    """Log the subtask table (and the latent table) as W&B Tables plus scalar macro/micro.

    ``logger``: a wandb Run, or a Lightning WandbLogger (its ``experiment`` is used).
    """
    import wandb  # imported only when a W&B run is asked for (it starts a service)

    run = getattr(logger, "experiment", logger)
    rows = [[n, v["n"], v["accuracy"], v["invalid"]] for n, v in results["subtasks"].items()]
    payload: dict[str, Any] = {
        f"{key}/subtasks": wandb.Table(columns=["subtask", "n", "accuracy", "invalid"], data=rows),
        f"{key}/macro": results["macro"],
        f"{key}/micro": results["micro"],
    }
    latent = results.get("latent")
    if latent and latent.get("subtasks"):
        cols: list[Any] = ["subtask", "layer", "n", "output_accuracy", "probe_accuracy", "gap_all", "gap_wrong"]
        payload[f"{key}/latent"] = wandb.Table(
            columns=cols, data=[[n] + [v[c] for c in cols[1:]] for n, v in latent["subtasks"].items()]
        )
    run.log(payload)
