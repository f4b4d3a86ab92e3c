"""A training recipe checked against every published size it names, on the meta device (no weights, no GPU).

A recipe names the checkpoints it is written for in one comment line near its top,

    # sizes: llava-hf/llava-onevision-qwen2-7b-ov-hf, llava-hf/llava-onevision-qwen2-0.5b-ov-hf

each a hub id some family adapter lists in its ``published_sizes``. `check_on_meta` builds the recipe's model
section exactly as ``fit`` would (`VKVModule.configure_model`: load, gradient checkpointing, interventions,
probe layers) with ``model.model`` swapped for the config-only ``tiny://<family>@<size>`` of that checkpoint, so
every layer index, LoRA target, quantization skip module and probe layer the recipe names must resolve.
The checkpoint is always built config-only (`ensure_tiny(..., config_only=True)`): nothing is read or allocated.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from vkvtrain.errors import RecipeError
from vkvtrain.models.registry import ADAPTERS
from vkvtrain.models.tiny import ensure_tiny, parse_tiny
from vkvtrain.module import VKVModule

SIZES_LINE = re.compile(r"^#\s*sizes:\s*(?P<ids>.+)$", re.IGNORECASE | re.MULTILINE)


def published_model(hub_id: str) -> str:
    """``tiny://<family>@<size>`` of a published checkpoint, or an error listing the known ones."""
    known: dict[str, str] = {}
    for adapter in ADAPTERS.values():
        for size, spec in adapter.published_sizes.items():
            known[spec.hub_id] = f"tiny://{adapter.family}@{size}"
    if hub_id not in known:
        raise RecipeError(f"{hub_id!r} is not a published size vkvtrain knows; known: {', '.join(known)}.")
    return known[hub_id]


def recipe_sizes(path: str | Path) -> list[str]:
    """The hub ids a recipe's ``# sizes:`` line names (the first is the one its ``model.model`` loads)."""
    found = SIZES_LINE.search(Path(path).read_text())
    if found is None:
        raise RecipeError(f"{path} has no '# sizes: <hub id>, ...' line naming the checkpoints it is written for.")
    return [part.strip() for part in found.group("ids").split(",") if part.strip()]


def recipe_section(path: str | Path, section: str) -> dict[str, Any]:
    """One top-level section (``model``, ``data``, ``trainer``) of a recipe, as written."""
    recipe = yaml.safe_load(Path(path).read_text())
    if not isinstance(recipe, dict) or not isinstance(recipe.get(section), dict):
        raise RecipeError(f"{path} has no {section!r} section.")
    return dict(recipe[section])


def recipe_module(path: str | Path, **overrides: Any) -> VKVModule:
    """The recipe's ``model`` section as a `VKVModule` (parsed and type-checked like ``fit`` does; nothing is
    loaded), with top-level ``model.<key>`` values replaced by ``overrides``."""
    section = {**recipe_section(path, "model"), **overrides}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VKVModule, "model")
    config = parser.parse_object({"model": section})
    module = parser.instantiate_classes(config).model
    assert isinstance(module, VKVModule)
    return module


@dataclass
class MetaCheck:
    """What resolved for one recipe at one published size (on the meta device).

    Attributes:
        recipe, hub_id, model: the recipe file, the checkpoint, the ``tiny://`` model it was built as.
        num_layers, kv_heads, head_dim: the LM's shape.
        probe_layers: ``model.probe_layers`` resolved.
        lora_modules: full names of the modules LoRA adapted (empty without LoRA).
        grad_layers: layers whose keys a loss reads with gradients.
        quantization_skips: the skip modules checked against the model (empty without quantization).
        module: the built module (its ``mlm`` lives on the meta device).
    """

    recipe: str
    hub_id: str
    model: str
    num_layers: int
    kv_heads: int
    head_dim: int
    probe_layers: list[int]
    lora_modules: list[str]
    grad_layers: list[int]
    quantization_skips: list[str]
    module: VKVModule


def check_on_meta(path: str | Path, hub_id: str) -> MetaCheck:
    """Build recipe ``path`` for checkpoint ``hub_id`` on the meta device; raises where anything fails to
    resolve (a layer index, a LoRA target, a quantization skip module)."""
    model = published_model(hub_id)
    module = recipe_module(path, model=str(ensure_tiny(*parse_tiny(model), config_only=True)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*config-only.*quantization is not applied.*")
        module.configure_model()
    mlm = module.mlm
    lora = sorted(name.rsplit(".lora_A", 1)[0] for name, _ in mlm.model.named_modules() if name.endswith(".lora_A"))
    skips = module.quantization.skip_list(mlm.adapter.vision_modules) if module.quantization else []
    return MetaCheck(
        recipe=str(path), hub_id=hub_id, model=model, num_layers=mlm.num_layers, kv_heads=mlm.num_kv_heads,
        head_dim=mlm.head_dim, probe_layers=list(module.probe_layers), lora_modules=lora,
        grad_layers=sorted({layer for iv in module.intervention_list for layer in iv.grad_layers()}),
        quantization_skips=skips, module=module,
    )
