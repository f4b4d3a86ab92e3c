"""The probe-suite config (``eval/probes.yaml``): typed dataclasses, strict keys, dotted overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

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


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is ModelSpec:
            value = {"spec": value}
        if not isinstance(value, dict):
            raise RecipeError(f"{where or 'config'} must be a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        for key in value:
            if key not in names:
                raise RecipeError(f"unknown key {where + '.' if where else ''}{key}; valid keys: {sorted(names)}")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _build(arg, value, where)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise RecipeError(f"{where} must be a list, got {value!r}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise RecipeError(f"{where} must be {getattr(tp, '__name__', tp)}, got {value!r}")


def apply_override(raw: dict[str, Any], dotted: str, value: str) -> None:
    """Set ``raw[a][b]... = yaml(value)`` for ``dotted = "a.b..."``; ``model`` is short for one model spec."""
    parsed = yaml.safe_load(value) if value != "" else ""
    if dotted == "model":
        raw["models"] = [{"spec": str(parsed)}]
        return
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override --{dotted}: {key} is not a mapping")
    node[keys[-1]] = parsed


def load_config(path: str | Path | None, overrides: list[tuple[str, str]] | None = None) -> ProbeConfig:
    """Read the YAML (None = defaults), apply ``(dotted.key, value)`` overrides, validate strictly."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise RecipeError(f"probe config {str(p)!r} does not exist")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise RecipeError(f"{p}: the top level must be a mapping")
    for dotted, value in overrides or []:
        apply_override(raw, dotted, value)
    return _build(ProbeConfig, raw, "")
