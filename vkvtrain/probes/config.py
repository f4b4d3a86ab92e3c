"""The probe-suite config (``eval/probes.yaml``): typed dataclasses, parsed by vkvtrain's one parser
(vkvtrain.arguments: strict keys, dotted overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vkvtrain.data.perception import LOADERS
from vkvtrain.errors import RecipeError
from vkvtrain.probes.features import SOURCES
from vkvtrain.probes.protocol import ProbeProtocol
from vkvtrain.probes.tasks import REGISTRY, TASKS

__all__ = ["DataSpec", "ModelSpec", "PrefixSpec", "ProbeConfig", "ProbeProtocol", "TASKS"]


@dataclass
class ModelSpec:
    """One MLM and how it is probed.

    Args:
        spec: what ``load_mlm`` takes (hub id, local folder, ``tiny://<family>``). name: display name.
        perception_results: a ``results.json`` written by ``vkvtrain evaluate`` for this model; its BLINK macro
            accuracy is the model's perception score in the input-embedding correlation (None: no score).
        dtype: load dtype. random_init: probe the same architecture with fresh weights drawn from ``init_seed``
            (a control; tiny:// checkpoints are themselves seed 0).
        shuffle_tokens: the shuffled-tokens control: every image's token grids are permuted with a permutation
            drawn from ``shuffle_seed`` before the probes (eval/PROBES.md, Controls).
    """

    spec: str
    name: str | None = None
    perception_results: str | None = None
    dtype: str | None = None
    random_init: bool = False
    init_seed: int = 1
    shuffle_tokens: bool = False
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        if not self.spec:
            raise RecipeError("models[].spec is empty; give a hub id, a local folder or tiny://<family>")
        if self.perception_results and (self.random_init or self.shuffle_tokens):
            raise RecipeError(f"models entry {self.display_name!r} is a control; its perception_results would be "
                              f"another model's score. Give perception_results only to plain models.")

    @property
    def display_name(self) -> str:
        """``name``, else the spec marked with its controls, e.g. ``tiny://llava_next (random init)``."""
        if self.name:
            return self.name
        controls = [c for c, on in (("random init", self.random_init), ("shuffled tokens", self.shuffle_tokens)) if on]
        return f"{self.spec} ({', '.join(controls)})" if controls else self.spec


@dataclass
class DataSpec:
    """Where a task's items come from: ``source`` is ``synthetic`` or a loader name (pascal5i, msrc,
    imagenet_s, refcoco, spair71k, davis); ``n`` caps the items; ``options`` go to the loader or generator."""

    source: str = "synthetic"
    root: str | None = None
    n: int = 4
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise RecipeError(f"data.<task>.n must be >= 1, got {self.n}")


@dataclass
class PrefixSpec:
    """Text placed before the image: ``none``, ``generic`` (one text for all tasks) or ``task`` (per task;
    ``{text}`` is replaced by the sample's class name or expression)."""

    mode: Literal["none", "generic", "task"] = "none"
    generic: str = "Look at the image carefully."
    task: dict[str, str] = field(default_factory=lambda: {name: t.default_prefix for name, t in REGISTRY.items()})

    def __post_init__(self) -> None:
        if self.mode not in ("none", "generic", "task"):
            raise RecipeError(f"prefix.mode must be none, generic or task, got {self.mode!r}")
        bad = [t for t in self.task if t not in REGISTRY]
        if bad:
            raise RecipeError(f"unknown key prefix.task.{bad[0]}; prefix.task keys are task names {list(TASKS)}")


@dataclass
class ProbeConfig:
    """The whole probe run (``eval/probes.yaml``).

    Args:
        models: the MLMs (and controls) to probe. tasks: task names (:data:`TASKS`).
        layers: LM layers (None = all; negative count from the end). sources: subset of ``input_embeds``,
            ``layers``, ``vision``. encoder: optional un-finetuned encoder baseline (hub id or folder).
        prefix: prompt text before the image. data: per task, where its items come from.
        probe: the protocol knobs. batch_size: images per forward. device: where the models run.
        image_size: side of the synthetic images. key_image_size: side the key-agnosticism images are resized
            to; None = the model's usual grid (:func:`~vkvtrain.probes.key_images.default_key_image_size`).
        seed, output_dir, progress: run seed, output folder, progress bars.
    """

    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec("tiny://llava_onevision")])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    layers: list[int] | None = None
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    encoder: str | None = None
    prefix: PrefixSpec = field(default_factory=PrefixSpec)
    data: dict[str, DataSpec] = field(default_factory=dict)
    probe: ProbeProtocol = field(default_factory=ProbeProtocol)
    batch_size: int = 8
    device: str = "cpu"
    image_size: int = 64
    key_image_size: int | None = None
    seed: int = 0
    output_dir: str = "runs/probes"
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in REGISTRY]
        if bad:
            raise RecipeError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise RecipeError(f"tasks lists a task twice: {self.tasks}")
        bad = [d for d in self.data if d not in REGISTRY]
        if bad:
            raise RecipeError(f"unknown key data.{bad[0]}; data keys are task names {list(TASKS)}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            hint = " (the input-embedding row is called input_embeds)" if "embeds" in bad else ""
            raise RecipeError(f"sources must be a non-empty subset of {list(SOURCES)}, got {self.sources}{hint}")
        if not self.models:
            raise RecipeError("models is empty; give at least one model spec (e.g. tiny://llava_onevision)")
        for name, value, low in (("batch_size", self.batch_size, 1), ("image_size", self.image_size, 8)):
            if value < low:
                raise RecipeError(f"{name} must be >= {low}, got {value}")
        if self.key_image_size is not None and self.key_image_size < 1:
            raise RecipeError(f"key_image_size must be >= 1 or null (the model's usual grid), got {self.key_image_size}")
        for task in self.tasks:
            self.data.setdefault(task, DataSpec())
        for task, spec in self.data.items():
            self._check_source(task, spec)

    @staticmethod
    def _check_source(task: str, spec: DataSpec) -> None:
        if spec.source == "synthetic":
            return
        if spec.source not in LOADERS:
            raise RecipeError(f"data.{task}.source {spec.source!r} is unknown; use synthetic or one of {sorted(LOADERS)}")
        serves = REGISTRY[task].loader
        if serves is not None and spec.source != serves:
            raise RecipeError(f"data.{task}.source {spec.source!r} does not serve {task}; use {serves!r} (or synthetic)")
        if not spec.root:
            raise RecipeError(f"data.{task}.root is required for source {spec.source!r}: the folder of its native layout")
