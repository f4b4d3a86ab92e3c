"""LoRA on chosen later LM layers through peft, never on the vision tower.

peft's ``layers_to_transform`` also matches the vision encoder's layers (same names, same indices), so the
targets are one regex over full module names built from the family adapter's LM layer path:
``(.*\\.)?model\\.language_model\\.layers\\.(i|j)\\.self_attn\\.(q|k|v|o)_proj``.
The adapter is injected in place (``mlm.model`` keeps its class, so capture and the adapters still find their
layers) and saved as a standard peft adapter that ``PeftModel.from_pretrained(base, folder)`` loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from torch import nn

from vkvtrain.errors import RecipeError
from vkvtrain.interventions.base import Intervention
from vkvtrain.layers import resolve_layers
from vkvtrain.mlm import MLM

PROJECTIONS = ("q", "k", "v", "o")


def target_regex(lm_layers: str, layers: list[int], projections: list[str]) -> str:
    """peft ``target_modules`` regex (matched with re.fullmatch on full module names) for the attention
    projections of ``layers`` under the LM layer path ``lm_layers`` (e.g. "model.language_model.layers")."""
    bad = [p for p in projections if p not in PROJECTIONS]
    if bad or not projections:
        raise RecipeError(f"LateLoRA.projections must be a non-empty subset of {PROJECTIONS}, got {projections}.")
    layer_alt = "|".join(str(i) for i in layers)
    proj_alt = "|".join(projections)
    return rf"(.*\.)?{re.escape(lm_layers)}\.({layer_alt})\.self_attn\.({proj_alt})_proj"


class LateLoRA(Intervention):
    """LoRA adapters on the attention projections of chosen LM layers.

    Args:
        layers: LM layer indices (negative counts from the end).
        rank, alpha, dropout: LoRA hyper-parameters.
        projections: subset of q, k, v, o.
    """

    def __init__(
        self,
        layers: list[int],
        rank: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        projections: list[str] = ["q", "k", "v", "o"],  # noqa: B006 (jsonargparse needs a literal default)
    ) -> None:
        super().__init__()
        if not layers:
            raise RecipeError("LateLoRA.layers is empty; name at least one LM layer, e.g. [-4, -3, -2, -1].")
        self.layers = list(layers)
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.projections = list(projections)
        self.adapter_name = "default"
        self._peft: Any = None  # the PeftModel wrapper; kept out of nn.Module registration on purpose

    def attach(self, mlm: MLM) -> None:
        super().attach(mlm)
        resolved = resolve_layers(self.layers, mlm.num_layers, type(self).__name__)
        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=target_regex(mlm.adapter.lm_layers, resolved, self.projections),
            bias="none",
        )
        object.__setattr__(self, "_peft", get_peft_model(mlm.model, config, adapter_name=self.adapter_name))
        hit = [n for n, _ in mlm.model.named_modules() if n.endswith(".lora_A")]
        if not hit:
            raise RecipeError(f"LateLoRA found no LM attention projections in layers {resolved}.")

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        if self._peft is None:
            return []
        return [p for n, p in self._peft.named_parameters() if "lora_" in n and p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self._peft is None:
            return {}
        state = get_peft_model_state_dict(self._peft, adapter_name=self.adapter_name)
        return {k: v.detach() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self._peft, state, adapter_name=self.adapter_name)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise KeyError(f"LateLoRA: checkpoint has tensors this adapter lacks: {unexpected[:4]}...")

    def save_adapter(self, folder: str | Path) -> Path:
        """Write a standard peft adapter (adapter_config.json + adapter_model.safetensors) to ``folder``."""
        if self._peft is None:
            raise RuntimeError("LateLoRA.save_adapter: attach() the intervention to an MLM first.")
        self._peft.save_pretrained(str(folder), safe_serialization=True)
        return Path(folder)

    def export(self, parent: Path, index: int) -> Path:
        """The adapter in peft's format at ``parent/peft_adapter_<index>``."""
        return self.save_adapter(parent / f"peft_adapter_{index}")
