"""The intervention experiment on the model organism (``vkvtrain organism experiment``, ``make organism``).

Writes the organism's question folders (BLINK format, one stream per split so training and evaluation questions
never overlap), then runs :func:`vkvtrain.experiment.run_experiment`: the base organism and five arms — learned
prefix, late LoRA, key-artifact suppression (LoRA on the keys + the suppression loss), attention blocking of the
most input-agnostic image keys and its random-position control — each trained on the *trained* gap subtasks and
evaluated on held-out questions of (i) those subtasks, (ii) the *transfer* gap subtasks never trained on and (iii)
the taught questions (no regression). Every arm is compared with the base with paired 95% intervals; the table
is written as experiment.md / .json / .png and logged to W&B (offline unless logged in).

Everything is asked and answered in the organism's format (:data:`~vkvtrain.organism.questions.ORGANISM_PROTOCOL`:
the BLINK prompt as it is, answered "(B)"), which is also how a recipe reads BLINK-format training folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vkvtrain.data.synthetic_blink import write_questions
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.compare_report import difference_text
from vkvtrain.evaluation.config import WandbConfig
from vkvtrain.experiment import Arm, ExperimentConfig, QuestionSet, run_experiment
from vkvtrain.organism.names import ORGANISM_FAMILIES, ORGANISM_SCHEME, ORGANISM_SIZES
from vkvtrain.organism.questions import GAP_SUBTASKS, ORGANISM_PROTOCOL, TAUGHT, taught_questions, write_gap_blink
from vkvtrain.outcome import Outcome

#: trained on; the transfer set holds each one's sibling (same question form, other content)
TRAINED_SUBTASKS: tuple[str, ...] = ("Art_Style", "Semantic_Correspondence", "Visual_Correspondence")
TRANSFER_SUBTASKS: tuple[str, ...] = ("Visual_Similarity", "Functional_Correspondence")
ARMS: tuple[str, ...] = ("prefix", "late_lora", "key_artifact", "blocking", "blocking_random")


def arm(name: str, late_layers: list[int]) -> Arm:
    """One of :data:`ARMS` in recipe form; ``late_layers``: the LM layers LoRA, the key loss and blocking act on."""
    def lora(projections: list[str]) -> dict[str, Any]:
        return {"class_path": "vkvtrain.interventions.LateLoRA",
                "init_args": {"layers": late_layers, "rank": 8, "alpha": 16, "projections": projections}}

    if name == "prefix":
        return Arm(name, [{"class_path": "vkvtrain.interventions.LearnedPrefix",
                           "init_args": {"num_tokens": 8, "init_text": "Look at the image closely."}}],
                   learning_rate=1e-2)
    if name == "late_lora":
        return Arm(name, [lora(["q", "k", "v", "o"])], learning_rate=3e-3)
    if name == "key_artifact":
        return Arm(name, [lora(["k"]), {"class_path": "vkvtrain.interventions.KeyArtifactSuppression",
                                      "init_args": {"layers": late_layers, "weight": 1.0,
                                                    "key_kind": "keys_pre_rope"}}], learning_rate=3e-3)
    if name in ("blocking", "blocking_random"):
        selection = "agnostic" if name == "blocking" else "random"
        return Arm(name, [{"class_path": "vkvtrain.interventions.AttentionBlocking",
                           "init_args": {"layers": late_layers, "top_k": 2, "selection": selection}}], train=False)
    raise RecipeError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")


@dataclass
class OrganismExperimentConfig:
    """The organism experiment.

    family, size: the organism (``organism://<family>@<size>``, built and cached on first use); model: an
    organism folder instead (e.g. one written by ``organism build --out``). arms: names from :data:`ARMS`.
    seeds: one training run per arm and seed (pooled in the comparison). n_train: training questions per trained
    subtask; n_eval: held-out questions per evaluated subtask (taught types included). question_seed: the
    question streams (train and val are disjoint streams of it). steps, batch_size, late_layers: every
    training arm. probe_layer: the latent probe's LM layer ("heldout": chosen per subtask on held-out questions;
    on the organism that is layer 0, whose image values no intervention changes; a later layer shows the
    interventions' effect on the latent side). output_dir: the question folders and the experiment's outputs.
    """

    family: str = "llava_onevision"
    size: str = "full"
    model: str | None = None
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0])
    trained_subtasks: list[str] = field(default_factory=lambda: list(TRAINED_SUBTASKS))
    transfer_subtasks: list[str] = field(default_factory=lambda: list(TRANSFER_SUBTASKS))
    n_train: int = 160
    n_eval: int = 100
    question_seed: int = 0
    steps: int = 400
    batch_size: int = 8
    late_layers: list[int] = field(default_factory=lambda: [-2, -1])
    probe_layer: int | str = "heldout"
    n_resamples: int = 2000
    output_dir: str = "outputs/organism_experiment"
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(project="vkvtrain-organism"))
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model is None and (self.family not in ORGANISM_FAMILIES or self.size not in ORGANISM_SIZES):
            raise RecipeError(f"organism {self.family}@{self.size} does not exist; families: "
                              f"{', '.join(ORGANISM_FAMILIES)}, sizes: {', '.join(ORGANISM_SIZES)}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise RecipeError(f"arms {unknown or self.arms}: choose one or more of {', '.join(ARMS)}")
        for name, subtasks in (("trained_subtasks", self.trained_subtasks),
                               ("transfer_subtasks", self.transfer_subtasks)):
            bad = [s for s in subtasks if s not in GAP_SUBTASKS]
            if bad:
                raise RecipeError(f"{name}: {bad} are not gap subtasks; choose from {', '.join(GAP_SUBTASKS)}")
        if not self.trained_subtasks:
            raise RecipeError("trained_subtasks is empty: the training arms need questions to train on")
        if set(self.trained_subtasks) & set(self.transfer_subtasks):
            raise RecipeError("a subtask cannot be both trained and transfer: transfer means never trained on")
        if min(self.n_train, self.n_eval) < 2:
            raise RecipeError("n_train and n_eval must be >= 2 (a batch and a held-out probe split need them)")

    @property
    def model_name(self) -> str:
        return self.model or f"{ORGANISM_SCHEME}{self.family}@{self.size}"


def write_question_sets(cfg: OrganismExperimentConfig, root: Path) -> dict[str, QuestionSet]:
    """The training set and the three evaluation sets as BLINK-format folders under ``root``."""
    gap = root / "gap"
    write_gap_blink(gap, cfg.n_train, cfg.question_seed, "train", cfg.trained_subtasks)
    write_gap_blink(gap, cfg.n_eval, cfg.question_seed, "val", [*cfg.trained_subtasks, *cfg.transfer_subtasks])
    write_questions(root / "taught", taught_questions(cfg.n_eval, cfg.question_seed, "val"), "val")
    sets = {"train": QuestionSet(str(gap), "train", list(cfg.trained_subtasks)),
            "trained": QuestionSet(str(gap), "val", list(cfg.trained_subtasks))}
    if cfg.transfer_subtasks:
        sets["transfer"] = QuestionSet(str(gap), "val", list(cfg.transfer_subtasks))
    sets["taught"] = QuestionSet(str(root / "taught"), "val", list(TAUGHT))
    return sets


def experiment_config(cfg: OrganismExperimentConfig, sets: dict[str, QuestionSet]) -> ExperimentConfig:
    """The generic experiment this organism experiment runs."""
    return ExperimentConfig(
        model=cfg.model_name, train=sets["train"], evaluate={k: v for k, v in sets.items() if k != "train"},
        arms=[arm(name, list(cfg.late_layers)) for name in cfg.arms], seeds=list(cfg.seeds), steps=cfg.steps,
        batch_size=cfg.batch_size, mode="likelihood", continuation=ORGANISM_PROTOCOL.continuation,
        pre_prompt=ORGANISM_PROTOCOL.pre_prompt, probe_layer=cfg.probe_layer, n_resamples=cfg.n_resamples,
        output_dir=cfg.output_dir,
        wandb=cfg.wandb, progress=cfg.progress,
    )


def headline(table: dict[str, Any]) -> dict[str, str]:
    """Per question set and arm: the macro output- and latent-accuracy difference to the base [95% CI]."""
    figures = {}
    for name, comparison in table["sets"].items():
        labels = [r["label"] for r in comparison["runs"]]
        for metric, short in (("output_accuracy", "output"), ("probe_accuracy", "latent")):
            row = next((r for r in comparison["rows"] if r["subtask"] == "macro" and r["metric"] == metric), None)
            if row is None:
                continue
            cells = [f"{label} {difference_text(d)}"
                     for label, d in zip(labels[1:], row["differences"][1:])]
            figures[f"{name} {short} vs base (points)"] = "; ".join(cells)
    return figures


def experiment(config: OrganismExperimentConfig) -> Outcome:
    """Run the intervention experiment on the model organism: train each arm on the trained gap subtasks,
    evaluate base and arms on held-out trained, transfer and taught questions, compare each arm with the base.

    Writes experiment.md, experiment.json, experiment.png under ``output_dir`` (and a W&B table)."""
    out = Path(config.output_dir)
    sets = write_question_sets(config, out / "questions")
    table: dict[str, Any] = run_experiment(experiment_config(config, sets))
    return Outcome(
        title=f"organism experiment on {config.model_name} ({len(config.arms)} arms, seeds {config.seeds})",
        outputs={"table": str(out / "experiment.md"), "json": str(out / "experiment.json"),
                 "figure": str(out / "experiment.png"), "questions": str(out / "questions"),
                 **({"W&B run": table["wandb_run"]} if "wandb_run" in table else {})},
        figures=headline(table),
    )
