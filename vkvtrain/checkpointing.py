"""The vkvtrain training checkpoint format, written and read here only.

A checkpoint (Lightning format) holds ``state_dict`` = the trainable tensors of the interventions only
(``interventions.<i>.<name>``) and ``checkpoint["vkvtrain"]`` = {"recipe": resolved YAML, "model": the model
id trained, "interventions": [{"class_path", "init_args"}, ...]}. It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from vkvtrain.checkpoint_files import load_checkpoint_file
from vkvtrain.errors import RecipeError
from vkvtrain.interventions.base import Intervention

CHECKPOINT_KEY = "vkvtrain"


def intervention_state(interventions: list[Intervention]) -> dict[str, torch.Tensor]:
    """The checkpoint's ``state_dict``: every intervention's trainable tensors as ``interventions.<i>.<name>``
    (CPU, detached)."""
    return {
        f"interventions.{i}.{name}": tensor.detach().cpu()
        for i, intervention in enumerate(interventions)
        for name, tensor in intervention.trainable_state_dict().items()
    }


def checkpoint_entry(recipe: str, model: str, interventions: list[Intervention]) -> dict[str, Any]:
    """The ``{"vkvtrain": {...}}`` entry a training checkpoint carries beside Lightning's own."""
    return {CHECKPOINT_KEY: {"recipe": recipe, "model": model,
                             "interventions": [intervention.spec() for intervention in interventions]}}


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (CPU tensors); raises RecipeError if it is not a vkvtrain training checkpoint."""
    path = Path(ckpt_path)
    checkpoint = load_checkpoint_file(ckpt_path)  # local files only, weights_only=True, one-line errors
    if CHECKPOINT_KEY not in checkpoint:
        raise RecipeError(f"{str(path)!r} is not a vkvtrain training checkpoint (no {CHECKPOINT_KEY!r} entry).")
    return checkpoint


def build_intervention(spec: dict[str, Any]) -> Intervention:
    """Instantiate ``{"class_path": "pkg.mod.Class", "init_args": {...}}``; only Intervention subclasses."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise RecipeError(f"{spec['class_path']!r} in the checkpoint is not a vkvtrain Intervention.")
    return cls(**spec.get("init_args", {}))


def restore_into(mlm: Any, ckpt_path: str | Path) -> list[Intervention]:
    """Attach the checkpoint's interventions to ``mlm`` with their trained tensors; returns them in order.

    Prompts must carry ``prompt_prefix(interventions)`` before the images when a learned prefix is present.
    """
    checkpoint = read_checkpoint(ckpt_path)
    interventions = [build_intervention(spec) for spec in checkpoint[CHECKPOINT_KEY]["interventions"]]
    for intervention in interventions:
        intervention.attach(mlm)
    load_intervention_states(interventions, checkpoint["state_dict"])
    device = mlm.device
    for intervention in interventions:
        intervention.to(device)
    return interventions


def prompt_prefix(interventions: list[Intervention]) -> str | None:
    """The text the interventions need right before the image(s) (e.g. learned-prefix placeholders)."""
    parts = [p for iv in interventions if (p := iv.prompt_prefix())]
    return "".join(parts) or None


def load_intervention_states(interventions: list[Intervention], state: dict[str, torch.Tensor]) -> None:
    """Split ``interventions.<i>.<name>`` tensors by index and load each intervention's part."""
    parts: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(interventions))}
    for key, value in state.items():
        _, index, name = key.split(".", 2)
        if int(index) not in parts:
            raise KeyError(f"checkpoint holds tensors of intervention #{index}, the recipe has {len(interventions)}.")
        parts[int(index)][name] = value
    for intervention, part in zip(interventions, parts.values()):
        intervention.load_trainable_state_dict(part)
