"""An intervention experiment: does an intervention surface more of what the image keys/values hold?

Each *arm* (a list of interventions in recipe form) is trained with ``vkvtrain fit`` on a training set of
BLINK-format questions (or, for untrained arms such as attention blocking, only calibrated at evaluation);
the base model and every arm are evaluated with ``vkvtrain evaluate`` on held-out question sets (e.g. the
trained subtasks, subtasks never trained on, and the questions the model was taught before); and every arm is
compared with the base with ``vkvtrain compare``'s paired statistics. The result is one table: per question
set, subtask (and macro / micro) and metric — output accuracy, latent probe accuracy, surfacing gap — the base
value, each arm's value and its difference to the base with a paired 95% bootstrap interval (and the exact
McNemar p-value for output accuracy), written as experiment.md, experiment.json and experiment.png and logged
to W&B (offline unless logged in).

The same code runs the CPU model organism (``make organism``) and a GPU user's real checkpoints: only the
model name, the question folders and the arms change.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.cli import run as run_evaluation
from vkvtrain.evaluation.compare import CompareConfig, compare_runs, load_run
from vkvtrain.evaluation.compare_report import TITLES, difference_text, percent
from vkvtrain.evaluation.config import DataConfig, EvalConfig, ProbeConfig, WandbConfig
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.outputs import check_writable_dir
from vkvtrain.plots import close
from vkvtrain.plots import pyplot as plt
from vkvtrain.training_cli import fit

BLINK_COLUMNS = dict(image_columns=["image_1", "image_2", "image_3", "image_4"], question_field="prompt",
                     answer_field="answer", task_field="sub_task", choices_field="choices", points_field="points")


@dataclass
class Arm:
    """One row of the experiment: ``interventions`` in recipe form (``{class_path, init_args}`` each).

    train: fit them (``steps`` steps) before evaluating; False evaluates them untrained (attention blocking:
    its positions are calibrated on the first questions' images of each evaluated set, answers unused).
    """

    name: str
    interventions: list[dict[str, Any]]
    train: bool = True
    learning_rate: float = 1e-3


@dataclass
class QuestionSet:
    """BLINK-format questions in a local folder (``root/<Subtask>/<split>.parquet``)."""

    root: str
    split: str = "val"
    subtasks: list[str] | None = None


@dataclass
class ExperimentConfig:
    """The whole experiment.

    model: what ``load_mlm`` takes. train: the training questions (every arm with ``train``). evaluate: named
    held-out question sets. arms: the interventions compared with the base model. seeds: one fit per arm and seed
    (seeds pool into one row in the comparison). steps, batch_size: each fit. continuation: the answer form scored
    in likelihood mode (the form the training answers have, e.g. "(A)" -> paren_letter). pre_prompt: text before
    each question at evaluation; empty by default because the training prompts are the questions' own ``prompt``
    field (evaluate's lmms-eval default adds an instruction the arms never trained with). probe_layer: the latent
    probe's layer ("heldout": chosen per subtask on a held-out part). n_resamples: bootstrap resamples.
    """

    model: str
    train: QuestionSet
    evaluate: dict[str, QuestionSet]
    arms: list[Arm]
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 100
    batch_size: int = 8
    mode: Literal["likelihood", "generate"] = "likelihood"
    continuation: Literal["letter", "paren_letter", "letter_and_text"] = "paren_letter"
    pre_prompt: str = ""
    probe_layer: int | str = "heldout"
    n_resamples: int = 2000
    output_dir: str = "outputs/experiment"
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="vkvtrain-experiment"))
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.arms:
            raise RecipeError("experiment: no arms; give at least one intervention arm to compare with the base")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names) or "base" in names:
            raise RecipeError(f"experiment: arm names must be distinct and not 'base', got {names}")
        if not self.evaluate:
            raise RecipeError("experiment: no evaluate question sets")
        if not self.seeds or self.steps < 1 or self.batch_size < 1:
            raise RecipeError("experiment: seeds must be non-empty, steps and batch_size >= 1")


def recipe(cfg: ExperimentConfig, arm: Arm, seed: int, root: Path) -> dict[str, Any]:
    """The fit recipe of one arm and seed (a LightningCLI config in vkvtrain's recipe format)."""
    train = {"source": cfg.train.root, "split": cfg.train.split, **BLINK_COLUMNS}
    return {
        "seed_everything": seed,
        "model": {"model": cfg.model, "learning_rate": arm.learning_rate, "interventions": arm.interventions},
        "data": {"train": train, "batch_size": cfg.batch_size, "seed": seed},
        "trainer": {
            "accelerator": "auto", "devices": 1, "max_steps": cfg.steps, "limit_val_batches": 0,
            "num_sanity_val_steps": 0, "log_every_n_steps": 10, "enable_progress_bar": cfg.progress,
            "enable_model_summary": False, "logger": False, "default_root_dir": str(root),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "save_top_k": 0}}],
        },
    }


def _fit(cfg: ExperimentConfig, arm: Arm, seed: int, folder: Path) -> str:
    """Train one arm; the path of its last checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(cfg, arm, seed, folder / "runs"), sort_keys=False))
    outcome = fit([str(path)])
    checkpoint = outcome.outputs.get("checkpoint (last)") if outcome is not None else None
    if not checkpoint:
        raise RecipeError(f"experiment: fitting {arm.name} (seed {seed}) wrote no checkpoint under {folder}")
    return str(checkpoint)


def _evaluate(cfg: ExperimentConfig, questions: QuestionSet, out: Path, ckpt: str | None = None,
              interventions: list[dict[str, Any]] | None = None) -> Path:
    """Evaluate the model (with a checkpoint's or untrained interventions) on one question set; its folder."""
    config = EvalConfig(
        model=cfg.model, ckpt_path=ckpt, mode=cfg.mode, batch_size=cfg.batch_size,
        interventions=list(interventions or []), output_dir=str(out), progress=cfg.progress,
        data=DataConfig(source="local", root=questions.root, split=questions.split, subtasks=questions.subtasks),
        prompt=PromptProtocol(pre_prompt=cfg.pre_prompt, continuation=cfg.continuation),
        probes=ProbeConfig(probe_layer=cfg.probe_layer, locate_markers=False),
    )
    run_evaluation(config)
    return out


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Fit, evaluate and compare (see the module docstring); returns the experiment's JSON-ready table."""
    out = check_writable_dir(cfg.output_dir, "output_dir")
    out.mkdir(parents=True, exist_ok=True)
    folders: dict[str, dict[str, list[str]]] = {name: {"base": []} for name in cfg.evaluate}
    steps = len(cfg.evaluate) * (1 + len(cfg.seeds) * len(cfg.arms)) + len(cfg.seeds) * sum(a.train for a in cfg.arms)
    done, start = 0, time.perf_counter()

    def step(what: str) -> None:
        nonlocal done
        done += 1
        print(f"[experiment {done}/{steps}, {time.perf_counter() - start:.0f} s] {what}", flush=True)

    for name, questions in cfg.evaluate.items():
        folders[name]["base"].append(str(_evaluate(cfg, questions, out / "base" / name)))
        step(f"evaluated base on {name}")
    for seed in cfg.seeds:
        for arm in cfg.arms:
            where = out / arm.name / f"seed{seed}"
            ckpt = None
            if arm.train:
                ckpt = _fit(cfg, arm, seed, where)
                step(f"fitted {arm.name} (seed {seed})")
            for name, questions in cfg.evaluate.items():
                done_folder = _evaluate(cfg, questions, where / name, ckpt=ckpt,
                                        interventions=None if arm.train else arm.interventions)
                folders[name].setdefault(arm.name, []).append(str(done_folder))
                step(f"evaluated {arm.name} (seed {seed}) on {name}")
    table = compare_sets(cfg, folders)
    write_outputs(out, table)
    if cfg.wandb.project and cfg.wandb.mode != "disabled":
        table["wandb_run"] = log_wandb(table, cfg.wandb, out)
    return table


def compare_sets(cfg: ExperimentConfig, folders: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """Every arm against the base on every question set (`vkvtrain.evaluation.compare`'s statistics)."""
    sets = {}
    for name, by_arm in folders.items():
        compare = CompareConfig(runs=[f"{label}={','.join(dirs)}" for label, dirs in by_arm.items()],
                                n_resamples=cfg.n_resamples)
        sets[name] = compare_runs([load_run(spec) for spec in compare.runs], compare)
    return {"model": cfg.model, "arms": [asdict(arm) for arm in cfg.arms], "seeds": cfg.seeds,
            "steps": cfg.steps, "train": asdict(cfg.train), "sets": sets}


def markdown(table: dict[str, Any]) -> str:
    """One table per question set and metric: base, each arm, each arm's difference [95% CI] (McNemar p)."""
    lines = [f"# Intervention experiment on {table['model']}", "",
             f"- arms: {', '.join(a['name'] for a in table['arms'])}; seeds {table['seeds']}; {table['steps']} "
             f"training steps on {table['train']['root']} ({table['train']['split']})",
             "- differences to the base with paired 95% bootstrap intervals (questions paired by id); p: exact "
             "McNemar on output accuracy (single-seed arms)", "", "## Overview (macro over subtasks, %)", "",
             overview(table).rstrip()]
    for name, comparison in table["sets"].items():
        labels = [r["label"] for r in comparison["runs"]]
        for metric, title in TITLES.items():
            rows = [r for r in comparison["rows"] if r["metric"] == metric]
            if not rows:
                continue
            head = ["subtask", "n", *(f"{label} %" for label in labels)]
            head += [f"{label} - base" for label in labels[1:]]
            lines += ["", f"## {name}: {title}", "", "| " + " | ".join(head) + " |",
                      "|---|" + "---:|" * (len(head) - 1)]
            for row in rows:
                cells = [row["subtask"], str(row["n"]), *(percent(v) for v in row["values"])]
                for d in row["differences"][1:]:
                    p = f", p={d['mcnemar_p']:.2g}" if d.get("mcnemar_p") is not None else ""
                    cells.append(difference_text(d) + p)
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def overview(table: dict[str, Any]) -> str:
    """One markdown table: per arm, the macro value of each question set and metric with its difference to the base
    [95% CI] (the base row holds the base values)."""
    columns = [(name, metric) for name, comparison in table["sets"].items() for metric in TITLES
               if any(r["metric"] == metric and r["subtask"] == "macro" for r in comparison["rows"])]
    head = ["arm", *(f"{name}: {TITLES[metric]}" for name, metric in columns)]
    labels = [r["label"] for r in next(iter(table["sets"].values()))["runs"]]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(columns)]
    for k, label in enumerate(labels):
        cells = [label]
        for name, metric in columns:
            row = next(r for r in table["sets"][name]["rows"] if r["metric"] == metric and r["subtask"] == "macro")
            d = row["differences"][k]
            cells.append(percent(row["values"][k]) if k == 0 else
                         f"{percent(row['values'][k])} ({difference_text(d)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    """Per question set (rows) and metric (columns): each arm's difference to the base per subtask, with its
    interval as a bar and a line at 0."""
    sets = list(table["sets"])
    metrics = list(TITLES)
    fig, axes = plt.subplots(len(sets), len(metrics), figsize=(4.2 * len(metrics), 0.5 + 2.6 * len(sets)),
                             squeeze=False)
    for i, name in enumerate(sets):
        comparison = table["sets"][name]
        labels = [r["label"] for r in comparison["runs"]][1:]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            rows = [r for r in comparison["rows"] if r["metric"] == metric]
            for k, label in enumerate(labels):
                ys = [y + (k - (len(labels) - 1) / 2) * 0.8 / max(len(labels), 1) for y in range(len(rows))]
                diffs = [r["differences"][k + 1] for r in rows]
                ax.errorbar([100 * d["difference"] for d in diffs], ys,
                            xerr=[[100 * (d["difference"] - d["low"]) for d in diffs],
                                  [100 * (d["high"] - d["difference"]) for d in diffs]],
                            fmt="o", ms=3, capsize=2, label=label)
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_yticks(range(len(rows)), [r["subtask"] for r in rows], fontsize=6)
            ax.set_title(f"{name}: {TITLES[metric]}", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
            ax.set_xlabel("difference to base (points)", fontsize=6)
        axes[i][0].legend(fontsize=5, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    close(fig)


def write_outputs(out: Path, table: dict[str, Any]) -> None:
    (out / "experiment.json").write_text(json.dumps(table, indent=1, default=str))
    (out / "experiment.md").write_text(markdown(table))
    plot(table, out / "experiment.png")


def log_wandb(table: dict[str, Any], cfg: WandbConfig, out: Path) -> str:
    """The table as one W&B table (offline unless logged in), under ``cfg.save_dir`` or the experiment's folder;
    returns the run's folder."""
    import wandb  # imported only when a W&B run is asked for (it starts a service process)

    columns: list[str | int] = ["set", "subtask", "metric", "n", "arm", "base", "value", "difference", "low", "high",
                                "mcnemar_p"]
    rows = []
    for name, comparison in table["sets"].items():
        labels = [r["label"] for r in comparison["runs"]]
        for row in comparison["rows"]:
            for k, label in enumerate(labels[1:], start=1):
                d = row["differences"][k]
                rows.append([name, row["subtask"], row["metric"], row["n"], label, row["values"][0],
                             row["values"][k], d["difference"], d["low"], d["high"], d.get("mcnemar_p")])
    run = wandb.init(project=cfg.project, name=cfg.name, mode=cfg.mode, dir=cfg.save_dir or str(out))
    run.log({"experiment": wandb.Table(columns=columns, data=rows)})
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir
