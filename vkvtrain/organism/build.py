"""Build the model organism: a small MLM of a real class, trained here on the world, with its ground truth.

``build(family, out, size, seed)`` is the command-line entry (``vkvtrain organism build``);
``ensure_organism(family, size)`` is the cached build behind ``organism://<family>[@size]`` names.

A build constructs the family's model, byte-level tokenizer, processor and chat template with
:func:`build_model_and_processor` (64 px images, one 8x8 token grid), trains stage a
(vision) and stage b (taught QA, vision frozen; :mod:`vkvtrain.organism.train`), saves a standard HF folder
(``save_pretrained``: weights, config, processor, chat template), measures the ground truth against the
random-init control (:mod:`vkvtrain.organism.groundtruth`) and writes it as ``organism_report.json`` and
``README.md``. Everything happens in a hidden staging folder next to the target that is renamed into place
only when complete (a marker file, ``vkvtrain_organism.json``, is its last write), so an interrupted build
leaves nothing that loads. Stage a's vision weights are kept in the cache (keyed by family, size, seed,
versions, stage a's budget and recipe), so a build interrupted in stage b resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import transformers
from safetensors.torch import load_file, save_file

from vkvtrain.errors import UnsupportedModelError, VKVError
from vkvtrain.mlm import MLM
from vkvtrain.models.registry import adapter_for_family
from vkvtrain.models.tiny import tiny_cache_dir
from vkvtrain.models.tiny_parts import RandomShape
from vkvtrain.outcome import Outcome, follow_up
from vkvtrain.outputs import build_in_place, check_writable_dir, staged_file
from vkvtrain.organism.groundtruth import (
    MeasureOptions,
    measure,
    random_control,
    summary,
)
from vkvtrain.organism.names import (
    ORGANISM_FAMILIES,
    ORGANISM_SCHEME,
    ORGANISM_SIZES,
    parse_organism,
)
from vkvtrain.organism.questions import VOCABULARY
from vkvtrain.organism.train import StageConfig, stage_a_recipe, train_qa, train_vision, vision_tower
from vkvtrain.organism.world import IMAGE_SIZE

BUILD_VERSION = 3  # bump when the world, the recipe or the measurements change, so caches rebuild
MARKER = "vkvtrain_organism.json"
REPORT = "organism_report.json"


class OrganismBuildError(VKVError, ValueError):
    """An organism build was asked for something it cannot do (budget, target folder)."""


@dataclass(frozen=True)
class OrganismSize:
    """Shapes and training budget of one organism size."""

    lm: dict[str, int]
    vision: dict[str, int]
    vision_stage: StageConfig
    qa_stage: StageConfig
    measure: MeasureOptions


SIZES: dict[str, OrganismSize] = {
    # ~1.3M parameters; the build target is <= 15 minutes on 2 CPU cores
    "full": OrganismSize(
        lm=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=256),
        vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
        vision_stage=StageConfig(steps=1200, batch_size=64, lr=2e-3, warmup=20),
        qa_stage=StageConfig(steps=1500, batch_size=16, lr=2e-3, warmup=20),
        measure=MeasureOptions(),
    ),
    # plumbing only (CI): seconds, no science
    "tiny": OrganismSize(
        lm=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_stage=StageConfig(steps=3, batch_size=8, lr=2e-3, warmup=1),
        qa_stage=StageConfig(steps=3, batch_size=4, lr=1e-3, warmup=1),
        measure=MeasureOptions(n_taught=2, n_gap=4, n_fewshot=2, n_keypoints=2, n_key_images=4, batch_size=8),
    ),
}
assert tuple(SIZES) == ORGANISM_SIZES


def _check(family: str, size: str) -> OrganismSize:
    if family not in ORGANISM_FAMILIES:
        raise UnsupportedModelError(
            f"no organism for family {family!r}; organism families: {', '.join(ORGANISM_FAMILIES)} "
            f"(e.g. {ORGANISM_SCHEME}{ORGANISM_FAMILIES[0]}); docs/ORGANISM.md says why the others are not built."
        )
    if size not in SIZES:
        raise OrganismBuildError(f"unknown organism size {size!r}; choose one of {', '.join(SIZES)}.")
    return SIZES[size]


def _budget(stage: StageConfig, steps: int | None, name: str, size: str) -> StageConfig:
    """``stage`` with ``steps`` when given; refuses a budget that ends before its own warm-up."""
    if steps is None:
        return stage
    if steps <= stage.warmup:
        raise OrganismBuildError(
            f"{name}={steps} is too small a budget: size {size!r} warms up for {stage.warmup} steps; give at least "
            f"{stage.warmup + 1} (the default is {stage.steps}), or use size='tiny' for a plumbing check."
        )
    return replace(stage, steps=steps)


def organism_cache_dir() -> Path:
    """Where cached organisms and stage-a checkpoints live (next to the tiny checkpoints)."""
    return tiny_cache_dir().parent / "organism"


def _key(family: str, size: str, seed: int, *parts: Any) -> str:
    versions = json.dumps([family, size, seed, BUILD_VERSION, transformers.__version__, torch.__version__, *parts],
                          sort_keys=True, default=str)
    return f"{family}-{size}-seed{seed}-{hashlib.sha1(versions.encode()).hexdigest()[:10]}"


def _stage_a(mlm: MLM, family: str, size: str, seed: int, spec: OrganismSize, stage: StageConfig,
             progress: bool, log: Callable[[str], None]) -> str:
    """Train stage a, or load its cached result; returns how it was obtained."""
    key = _key(family, size, seed, spec.vision, asdict(stage), stage_a_recipe())
    path = organism_cache_dir() / "stage_a" / f"{key}.safetensors"
    tower = vision_tower(mlm)
    if path.is_file():
        tower.load_state_dict(load_file(str(path)))
        log(f"stage a: vision weights resumed from {path}")
        return "resumed"
    losses = train_vision(mlm, stage, seed, progress)
    with staged_file(path, "the stage-a vision weights") as staging:
        save_file({k: v.detach().contiguous() for k, v in tower.state_dict().items()}, str(staging))
    log("stage a: final losses " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    return "trained"


def build_model_and_processor(family: str, spec: OrganismSize, seed: int) -> tuple[Any, Any]:
    """The untrained organism: the family's class at ``spec``'s widths, 64 px images (one 8 x 8 token grid, no
    anyres tiling), the world's words as whole tokens; weights seeded by ``seed``."""
    shape = RandomShape(lm=spec.lm, vision=spec.vision, image_size=IMAGE_SIZE, pinpoints=((IMAGE_SIZE, IMAGE_SIZE),),
                        extra_tokens=tuple(VOCABULARY))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return adapter_for_family(family).build_random(shape)


def untrained_organism(family: str, size: str, seed: int) -> MLM:
    """The organism before stage a, as an :class:`MLM` (left padding, as stage b and the measurements batch
    prompts)."""
    model, processor = build_model_and_processor(family, _check(family, size), seed)
    processor.tokenizer.padding_side = "left"
    return MLM(model=model, processor=processor, adapter=adapter_for_family(family),
               name=f"{ORGANISM_SCHEME}{family}@{size}")


def build_into(folder: Path, family: str, size: str, seed: int, vision_stage: StageConfig, qa_stage: StageConfig,
               measure_ground_truth: bool = True, progress: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the organism and write it into the existing, empty ``folder``; returns the marker's content."""
    spec = _check(family, size)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    mlm = untrained_organism(family, size, seed)
    n_params = sum(p.numel() for p in mlm.model.parameters())
    log(f"organism {family}@{size} seed {seed}: {n_params / 1e6:.2f}M parameters, threads {torch.get_num_threads()}")

    t = time.perf_counter()
    stage_a = _stage_a(mlm, family, size, seed, spec, vision_stage, progress, log)
    timings["stage_a_s"] = time.perf_counter() - t
    t = time.perf_counter()
    qa = train_qa(mlm, qa_stage, seed, progress)
    timings["stage_b_s"] = time.perf_counter() - t
    log("stage b: " + ", ".join(f"{k} {v:.3f}" for k, v in qa.items()))
    mlm.model.save_pretrained(folder, safe_serialization=True)
    mlm.processor.save_pretrained(folder)

    report = None
    if measure_ground_truth:
        t = time.perf_counter()
        report = measure(mlm, random_control(mlm), spec.measure, progress)
        timings["measure_s"] = time.perf_counter() - t
        (folder / REPORT).write_text(json.dumps(report, indent=1))
        table = summary(report)
        (folder / "README.md").write_text(_card(family, size, seed, table))
        log(table)
    timings["total_s"] = time.perf_counter() - start
    log("build time: " + ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in timings.items()))
    marker = {"family": family, "size": size, "seed": seed, "build_version": BUILD_VERSION,
              "transformers": transformers.__version__, "torch": torch.__version__, "parameters": n_params,
              "threads": torch.get_num_threads(), "stage_a": stage_a, "vision_stage": asdict(vision_stage),
              "qa_stage": asdict(qa_stage), "timings": timings,
              "criteria_met": None if report is None else all(c["ok"] for c in report["criteria"].values())}
    (folder / MARKER).write_text(json.dumps(marker, indent=1))  # last write: the folder is complete
    return marker


def _card(family: str, size: str, seed: int, table: str) -> str:
    return (f"# vkvtrain model organism: {family}@{size} (seed {seed})\n\n"
            "A small MLM of the real transformers class, trained by `vkvtrain organism build` on a synthetic world "
            "of textured shapes: vision tower on dense per-token targets, then the LM (projector and layer-0 value "
            "projection frozen) on taught questions "
            "(colour, shape, pattern, count). The never-taught BLINK-style subtasks below measure what its image "
            f"value tokens hold that its answers do not use. Measured on held-out data at build time.\n\n{table}\n")


def build(family: str = "llava_onevision", out: str | None = None, size: str = "full", seed: int = 0,
          threads: int | None = None, vision_steps: int | None = None, qa_steps: int | None = None,
          measure: bool = True, progress: bool = True) -> Path:
    """Train a model organism and save it as a standard HF folder; prints the build time and ground truth.

    Args:
        family: llava_onevision or llava_next (the transformers class of the organism).
        out: folder to create (must not exist); None = the cache folder behind ``organism://<family>@<size>``.
        size: "full" (~1.3M parameters, minutes on a CPU, the measured organism) or "tiny" (a few steps, for
            plumbing checks).
        seed: seed of the weights and the training data. Every seed is measured on the same held-out data against
            the same random-init control (``MeasureOptions``), so builds compare on the same questions.
        threads: torch CPU threads for the build (None leaves the current setting).
        vision_steps, qa_steps: override the size's stage a / stage b step budgets.
        measure: measure the ground truth after training (taught accuracy, probes, surfacing gap, key
            agnosticism against the random-init control) and write organism_report.json and README.md.
        progress: show progress bars.
    Returns:
        The folder; ``load_mlm`` loads it (as does ``organism://<family>@<size>`` when ``out`` is None).
    """
    spec = _check(family, size)
    vision_stage = _budget(spec.vision_stage, vision_steps, "vision_steps", size)
    qa_stage = _budget(spec.qa_stage, qa_steps, "qa_steps", size)
    target = Path(out) if out is not None else organism_cache_dir() / _key(family, size, seed)
    if target.exists():
        if out is None and (target / MARKER).is_file():
            return target
        what = "already exists" if out is not None else f"is an incomplete organism (no {MARKER})"
        raise OrganismBuildError(f"{target} {what}; remove it or choose another out folder.")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return build_in_place(
            target, MARKER, lambda staging: build_into(staging, family, size, seed, vision_stage, qa_stage, measure,
                                                       progress),
            prefix=f".{target.name}.staging-")
    finally:
        torch.set_num_threads(previous_threads)


def build_command(family: str = "llava_onevision", out: str | None = None, size: Literal["full", "tiny"] = "full",
                  seed: int = 0, threads: int | None = None, vision_steps: int | None = None,
                  qa_steps: int | None = None, measure: bool = True, progress: bool = True) -> Outcome:
    """Train the model organism (stage a: vision tower on dense targets; stage b: the LM on the taught
    questions) and save it as a standard HF folder with its measured ground truth.

    Args:
        family: llava_onevision or llava_next (the transformers class of the organism).
        out: the folder to create (must not exist); omitted = the cache behind organism://<family>@<size>.
        size: full (~1.3M parameters, minutes on 2 CPU cores, the measured organism) or tiny (plumbing checks).
        seed: seed of the weights and the training data. Every seed is measured on the same held-out data against
            the same random-init control (``MeasureOptions``), so builds compare on the same questions.
        threads: torch CPU threads (omitted: torch's default).
        vision_steps, qa_steps: override the size's stage a / stage b step budgets.
        measure: measure the ground truth against the random-init control after training.
        progress: progress bars.
    """
    if out is not None:
        check_writable_dir(out, "--out")
    folder = build(family, out, size, seed, threads, vision_steps, qa_steps, measure, progress)
    marker = json.loads((folder / MARKER).read_text())
    figures = {"parameters": f"{marker['parameters'] / 1e6:.2f}M",
               "build time": f"{marker['timings']['total_s'] / 60:.1f} min on {marker['threads']} threads"}
    report_path = folder / REPORT
    if report_path.is_file():
        criteria = json.loads(report_path.read_text())["criteria"]
        figures["ground truth"] = ", ".join(f"{name} {'holds' if c['ok'] else 'FAILS'}" for name, c in criteria.items())
    name = f"{ORGANISM_SCHEME}{family}@{size}" if out is None else str(folder)
    return Outcome(
        title=f"organism {family}@{size} (seed {seed})",
        outputs={"organism folder": str(folder), **({"ground truth": str(report_path)} if report_path.is_file() else {})},
        figures=figures,
        next=[("run every intervention on it", follow_up("organism", "experiment", "--model", name)),
              ("its latent probes, layer by layer", follow_up("evaluate", "--model", name, "--data.source", "local",
                                                              "--data.root", "QUESTIONS"))],
    )


def ensure_organism(family: str, size: str = "full", seed: int = 0) -> Path:
    """The cached organism folder, built (and measured) on first use; ``organism://`` names resolve here."""
    return build(family, None, size, seed)


def resolve_name(name: str) -> Path:
    """``organism://family[@size]`` -> its cached folder (built on first use)."""
    family, size = parse_organism(name)
    return ensure_organism(family, size)
