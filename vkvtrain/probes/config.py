"""The probe-suite config (``eval/probes.yaml``): typed dataclasses, parsed by vkvtrain's one parser
(vkvtrain.arguments: strict keys, dotted overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vkvtrain.errors import RecipeError

TASKS = ("fewshot", "coseg", "semantic", "referring", "keypoints", "temporal", "key_agnosticism")
PRIMARY = {"fewshot": "miou", "coseg": "jaccard", "semantic": "miou", "referring": "miou", "keypoints": "pck",
           "temporal": "jf", "key_agnosticism": "score"}

DEFAULT_TASK_PREFIXES = {
    "fewshot": "Segment the main object in the next image.",
    "coseg": "Find the object this image shares with other images.",
    "semantic": "Find every {text} in the next image.",
    "referring": "Find {text} in the next image.",
    "keypoints": "Look at the parts of the object in the next image.",
    "temporal": "Track the moving objects in the next video frame.",
    "key_agnosticism": "Look at the next image.",
}


@dataclass
class ModelSpec:
    """One MLM: ``spec`` is what ``load_mlm`` takes; ``perception_score`` (e.g. BLINK macro accuracy) feeds
    the layer-0 correlation; ``random_init`` probes the same architecture with fresh weights drawn from
    ``init_seed`` (a control; tiny:// checkpoints are themselves seed 0)."""

    spec: str
    name: str | None = None
    perception_score: float | None = None
    dtype: str | None = None
    random_init: bool = False
    init_seed: int = 1


@dataclass
class DataSpec:
    """Where a task's items come from: ``source`` is ``synthetic`` or a loader name (pascal5i, msrc,
    imagenet_s, refcoco, spair71k, davis); ``n`` caps the items; ``options`` go to the loader or generator."""

    source: str = "synthetic"
    root: str | None = None
    n: int = 4
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrefixSpec:
    """Text placed before the image: ``none``, ``generic`` (one text for all tasks) or ``task`` (per task;
    ``{text}`` is replaced by the sample's class name or expression)."""

    mode: Literal["none", "generic", "task"] = "none"
    generic: str = "Look at the image carefully."
    task: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TASK_PREFIXES))


@dataclass
class ProbeOptions:
    """Protocol knobs (see eval/PROBES.md)."""

    upsample: Literal["bilinear", "nearest"] = "bilinear"
    fewshot_c: float = 10.0
    coseg_k: int = 4
    grounding_threshold: float | str = 0.5
    pck_alpha: float = 0.1
    pck_normalize: Literal["bbox", "image"] = "bbox"
    temporal_topk: int = 5
    temporal_context: int = 7
    temporal_temperature: float = 0.07
    key_threshold: float | None = None
    key_images: int = 8


@dataclass
class ProbeConfig:
    """The whole probe run."""

    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec("tiny://llava_onevision")])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    layers: list[int] | None = None
    sources: list[str] = field(default_factory=lambda: ["embeds", "layers", "vision"])
    encoder: str | None = None
    prefix: PrefixSpec = field(default_factory=PrefixSpec)
    data: dict[str, DataSpec] = field(default_factory=dict)
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    batch_size: int = 8
    device: str = "cpu"
    image_size: int = 64
    seed: int = 0
    output_dir: str = "runs/probes"
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise RecipeError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
        bad = [d for d in self.data if d not in TASKS]
        if bad:
            raise RecipeError(f"unknown key data.{bad[0]}; data keys are task names {list(TASKS)}")
        if self.prefix.mode not in ("none", "generic", "task"):
            raise RecipeError(f"prefix.mode must be none, generic or task, got {self.prefix.mode!r}")
        if not self.models:
            raise RecipeError("models is empty; give at least one model spec (e.g. tiny://llava_onevision)")
        for task in self.tasks:
            self.data.setdefault(task, DataSpec())
