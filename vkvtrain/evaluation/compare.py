"""``python -m vkvtrain compare RUN_A RUN_B [RUN_C ...] --output_dir DIR``: was more surfaced, beyond chance?

A RUN is ``[LABEL=]FOLDER[,FOLDER...]``: evaluate output folders (results.json + responses.jsonl). Several
folders (or a quoted glob such as ``"runs/prefix_seed*"``) are seeds of one run and pool into one row: each
question's score is its mean over the seeds. Runs must share the question set (ids and gold answers), the
protocol and the resolution settings; otherwise the command refuses, naming the difference.

Per subtask, and overall as ``macro`` (mean of the subtask values, BLINK's official average) and ``micro``
(pooled over questions), for each run: output accuracy, latent probe accuracy and surfacing gap (probe right
and output wrong, share of the questions), each on the questions where the run's probe applies at its chosen
layer (the evaluated part of a held-out layer selection). Every later run is compared with the first: the
difference, its paired bootstrap interval (questions paired by id; stratified by subtask for the overall rows;
``n_resamples``, ``seed``, ``confidence``) and, for output accuracy of single-seed runs, the exact McNemar
p-value. Outputs: compare.json, compare.md and compare.png in ``output_dir``; a W&B table with
``wandb.project``.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from vkvtrain.data.blink import BLINK_SUBTASKS
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.compare_report import log_wandb, write_outputs
from vkvtrain.evaluation.config import WandbConfig
from vkvtrain.evaluation.statistics import mcnemar_exact, paired_bootstrap
from vkvtrain.outcome import Outcome
from vkvtrain.outputs import check_writable_dir

METRICS = ("output_accuracy", "probe_accuracy", "gap_all")
Question = tuple[str, str]  # (subtask, idx)


@dataclass
class CompareConfig:
    """runs: two or more ``[LABEL=]FOLDER[,FOLDER...]`` (several folders or a glob = seeds pooled into one row);
    the first is the reference. output_dir: where compare.json, compare.md and compare.png go. n_resamples, seed,
    confidence: the paired bootstrap. wandb: set ``project`` to log the table."""

    POSITIONAL: ClassVar[str] = "runs"  # `compare RUN_A RUN_B ...`: the bare arguments are the runs

    runs: list[str] = field(default_factory=list)
    output_dir: str = "outputs/compare"
    n_resamples: int = 10_000
    seed: int = 0
    confidence: float = 0.95
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if len(self.runs) < 2:
            raise RecipeError(f"compare needs at least two runs (evaluate output folders), got {len(self.runs)}")
        if self.n_resamples < 1:
            raise RecipeError(f"n_resamples must be >= 1, got {self.n_resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise RecipeError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass
class Folder:
    """One evaluate output folder: its results, gold answers and per-question scores.

    scores[metric][(subtask, idx)]: output_accuracy 1.0 if answered right; probe_accuracy 1.0 if the probe is
    right at the folder's chosen layer; gap_all 1.0 if the probe is right and the output wrong. The latent
    metrics exist only for questions its probe scored outside the held-out layer-selection part.
    """

    path: Path
    results: dict[str, Any]
    gold: dict[Question, str]
    scores: dict[str, dict[Question, float]]


@dataclass
class Run:
    """One row of the comparison: one or more seed folders; ``scores`` pools them (mean over the seeds)."""

    label: str
    folders: list[Folder]
    scores: dict[str, dict[Question, float]]

    @property
    def binary(self) -> bool:
        """One seed: every score is right (1) or wrong (0), so McNemar's test applies."""
        return len(self.folders) == 1


def expand_run(spec: str) -> tuple[str, list[Path]]:
    """``[LABEL=]FOLDER[,FOLDER...]`` (globs expanded, sorted) -> (label, folders)."""
    label, _, paths = spec.partition("=") if "=" in spec.split(",")[0] else ("", "", spec)
    folders: list[Path] = []
    for part in filter(None, paths.split(",")):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        if not matches:
            raise RecipeError(f"run {spec!r}: the pattern {part!r} matches no folder")
        folders += [Path(m) for m in matches]
    if not folders:
        raise RecipeError(f"run {spec!r} names no folder; give [LABEL=]FOLDER[,FOLDER...]")
    return label or (folders[0].name + (f" ({len(folders)} seeds)" if len(folders) > 1 else "")), folders


def read_folder(path: Path) -> Folder:
    """Read results.json and responses.jsonl of an evaluate output folder into per-question scores."""
    if not (path / "results.json").is_file() or not (path / "responses.jsonl").is_file():
        raise RecipeError(f"{path} is not an evaluate output folder (results.json and responses.jsonl); "
                          "pass the output_dir of `python -m vkvtrain evaluate`")
    results = json.loads((path / "results.json").read_text())
    missing = [k for k in ("protocol", "resolution") if k not in results]
    if missing:
        raise RecipeError(f"{path}/results.json has no {' or '.join(missing)} record (written before vkvtrain "
                          "recorded them); re-run evaluate to compare it")
    latent = results.get("latent") or {}
    layers = latent.get("layers") or []
    chosen = {name: v["layer"] for name, v in (latent.get("subtasks") or {}).items()}
    gold: dict[Question, str] = {}
    scores: dict[str, dict[Question, float]] = {m: {} for m in METRICS}
    for line in (path / "responses.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["answer"] is None:  # hidden test answers: nothing to score
            continue
        key = (rec["sub_task"], rec["idx"])
        gold[key] = rec["answer"]
        right = bool(rec["correct"])
        scores["output_accuracy"][key] = float(right)
        layer = chosen.get(rec["sub_task"])
        if "probe_correct" in rec and not rec.get("probe_heldout") and layer is not None:
            probe = bool(rec["probe_correct"][layers.index(layer)])
            scores["probe_accuracy"][key] = float(probe)
            scores["gap_all"][key] = float(probe and not right)
    return Folder(path, results, gold, scores)


def _differences(a: dict[str, Any], b: dict[str, Any], where: str = "") -> list[str]:
    """Every differing key path of two nested dicts, with both values (empty when equal)."""
    found: list[str] = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found += _differences(x, y, f"{where}{key}.")
        elif x != y:
            found.append(f"{where}{key}: {x!r} vs {y!r}")
    return found


def check_comparable(folders: Sequence[Folder]) -> None:
    """Refuse, naming the difference, folders made on other questions, protocols or resolution settings."""
    ref = folders[0]
    for other in folders[1:]:
        for key in ("protocol", "resolution"):
            if found := _differences(ref.results[key], other.results[key]):
                raise RecipeError(f"{other.path} and {ref.path} differ in {key} ({'; '.join(found)}); compare runs made with "
                                  "the same protocol and resolution settings")
        if other.gold != ref.gold:
            only_other = sorted(set(other.gold) - set(ref.gold))[:3]
            only_ref = sorted(set(ref.gold) - set(other.gold))[:3]
            answers = sorted(q for q in set(ref.gold) & set(other.gold) if ref.gold[q] != other.gold[q])[:3]
            raise RecipeError(f"{other.path} and {ref.path} were evaluated on different question sets (only in "
                              f"{other.path}: {only_other}; only in {ref.path}: {only_ref}; other gold answers: "
                              f"{answers}); compare runs on the same questions")


def load_run(spec: str) -> Run:
    """Read one run's folders (seeds, which must match each other) and pool their per-question scores."""
    label, paths = expand_run(spec)
    folders = [read_folder(p) for p in paths]
    check_comparable(folders)
    scores: dict[str, dict[Question, float]] = {}
    for metric in METRICS:
        shared = set.intersection(*(set(f.scores[metric]) for f in folders))
        scores[metric] = {q: float(np.mean([f.scores[metric][q] for f in folders])) for q in shared}
    return Run(label, folders, scores)


def _order(names: set[str]) -> list[str]:
    rank = {s: i for i, s in enumerate(BLINK_SUBTASKS)}
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


def _row(subtask: str, metric: str, runs: Sequence[Run], cfg: CompareConfig) -> dict[str, Any] | None:
    """One table row: each run's value and every run's difference to the first, on the shared questions."""
    shared = set.intersection(*(set(r.scores[metric]) for r in runs))
    if subtask not in ("macro", "micro"):
        shared = {q for q in shared if q[0] == subtask}
    questions = sorted(shared)
    if not questions:
        return None
    strata = np.array([q[0] for q in questions])
    statistic = subtask if subtask in ("macro", "micro") else "mean"
    values = [np.array([r.scores[metric][q] for q in questions]) for r in runs]  # per run: (N,)

    def value(v: np.ndarray) -> float:
        if statistic == "macro":
            return float(np.mean([v[strata == name].mean() for name in dict.fromkeys(strata.tolist())]))
        return float(v.mean())

    differences: list[dict[str, Any] | None] = [None]
    for run, v in zip(runs[1:], values[1:]):
        boot = paired_bootstrap(values[0], v, strata.tolist(), statistic,  # type: ignore[arg-type]
                                cfg.n_resamples, cfg.seed, cfg.confidence)
        entry: dict[str, Any] = {"difference": boot.difference, "low": boot.low, "high": boot.high}
        if metric == "output_accuracy" and subtask != "macro" and runs[0].binary and run.binary:
            test = mcnemar_exact(values[0], v)
            entry.update(mcnemar_p=test.p_value, only_first_right=test.b, only_this_right=test.c)
        differences.append(entry)
    return {"subtask": subtask, "metric": metric, "n": len(questions), "n_subtasks": len(set(strata.tolist())),
            "values": [value(v) for v in values], "differences": differences}


def compare_runs(runs: Sequence[Run], cfg: CompareConfig) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see the module docstring)."""
    check_comparable([f for r in runs for f in r.folders])
    rows = []
    for metric in METRICS:
        names = _order({q[0] for r in runs for q in r.scores[metric]})
        for subtask in [*names, "macro", "micro"]:
            if (row := _row(subtask, metric, runs, cfg)) is not None:
                rows.append(row)
    first = runs[0].folders[0].results
    return {
        "runs": [{"label": r.label, "folders": [str(f.path) for f in r.folders], "seeds": len(r.folders),
                  "model": r.folders[0].results.get("model"),
                  "interventions": [f.results.get("interventions", []) for f in r.folders],
                  "data": [f.results.get("data") for f in r.folders]} for r in runs],
        "protocol": first["protocol"],
        "resolution": first["resolution"],
        "bootstrap": {"n_resamples": cfg.n_resamples, "seed": cfg.seed, "confidence": cfg.confidence,
                      "pairing": "question id", "macro_micro": "questions resampled within each subtask"},
        "rows": rows,
    }


def compare(config: CompareConfig) -> Outcome:
    """Compare evaluate output folders with the first one: per subtask and overall, output accuracy, latent probe
    accuracy and surfacing gap of each run, paired bootstrap intervals and exact McNemar p-values
    (eval/README.md). Writes compare.json, compare.md and compare.png into output_dir.

    Runs are given as bare arguments, ``[LABEL=]FOLDER[,FOLDER...]`` (several folders or a quoted glob pool the
    seeds of one run): ``python -m vkvtrain compare outputs/base "prefix=outputs/prefix_seed*"``.
    """
    check_writable_dir(config.output_dir, "output_dir")
    comparison = run(config)
    out = Path(config.output_dir)
    labels = [r["label"] for r in comparison["runs"]]
    figures = {}
    for row in comparison["rows"]:
        if row["subtask"] in ("macro", "micro") and row["metric"] == "output_accuracy":
            figures[f"{row['subtask']} output accuracy vs {labels[0]}"] = "; ".join(
                f"{label} {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                for label, d in zip(labels[1:], row["differences"][1:]) if d)
    return Outcome(title=f"compare {len(config.runs)} runs against {config.runs[0]}",
                   outputs={name: str(out / name) for name in ("compare.json", "compare.md", "compare.png")},
                   figures=figures)


def run(cfg: CompareConfig) -> dict[str, Any]:
    """Load the runs, compare them with the first, write compare.json / compare.md / compare.png."""
    runs = [load_run(spec) for spec in cfg.runs]
    comparison = compare_runs(runs, cfg)
    out = write_outputs(Path(cfg.output_dir), comparison)
    if cfg.wandb.project:
        log_wandb(comparison, cfg.wandb)
    print((out / "compare.md").read_text())
    return comparison
