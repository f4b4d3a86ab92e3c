"""The vkvtrain training checkpoint format, written and read here only.

A checkpoint (Lightning format) holds ``state_dict`` = the trainable tensors of the interventions only
(``interventions.<i>.<name>``) and ``checkpoint["vkvtrain"]`` = {"recipe": resolved YAML, "model": the model
id trained, "interventions": [{"class_path", "init_args"}, ...]}. It loads with ``torch.load(weights_only=True)``,
and a checkpoint's class paths name only vkvtrain's own interventions unless the caller trusts others by name:
nothing a checkpoint says is imported (a module planted next to a checkpoint never runs).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vkvtrain.checkpoint_files import load_checkpoint_file
from vkvtrain.errors import RecipeError
from vkvtrain.interventions import KNOWN_INTERVENTIONS
from vkvtrain.interventions.base import Intervention, attach_interventions
from vkvtrain.mlm import MLM

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


def build_intervention(spec: dict[str, Any], trusted: Sequence[str] = ()) -> Intervention:
    """Instantiate ``{"class_path": "pkg.mod.Class", "init_args": {...}}``.

    ``class_path`` must name one of vkvtrain's interventions (`vkvtrain.interventions.KNOWN_INTERVENTIONS`) or
    be listed in ``trusted`` (class paths a user wrote in their own recipe or config); nothing else is imported.
    """
    class_path = str(spec.get("class_path", ""))
    cls = KNOWN_INTERVENTIONS.get(class_path)
    if cls is None:
        if class_path not in trusted:
            raise RecipeError(
                f"intervention class {class_path!r} is not one of vkvtrain's ({', '.join(sorted(set(c.__name__ for c in KNOWN_INTERVENTIONS.values())))}); "
                "it is not imported. If it is your own class, name it in your config's interventions so it is trusted."
            )
        module_name, _, class_name = class_path.rpartition(".")
        found = getattr(importlib.import_module(module_name), class_name, None)
        if not (isinstance(found, type) and issubclass(found, Intervention)):
            raise RecipeError(f"{class_path!r} is not a vkvtrain Intervention subclass.")
        cls = found
    return cls(**spec.get("init_args", {}))


def restore_into(mlm: MLM, ckpt_path: str | Path, trusted: Sequence[str] = ()) -> list[Intervention]:
    """Attach the checkpoint's interventions to ``mlm`` with their trained tensors; returns them in order.

    Prompts must carry ``prompt_prefix(interventions)`` before the images when a learned prefix is present.
    ``trusted``: class paths beyond vkvtrain's own that the checkpoint may name (see `build_intervention`).
    """
    checkpoint = read_checkpoint(ckpt_path)
    interventions = [build_intervention(spec, trusted) for spec in checkpoint[CHECKPOINT_KEY]["interventions"]]
    attach_interventions(mlm, interventions)
    load_intervention_states(interventions, checkpoint["state_dict"])
    return interventions


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
