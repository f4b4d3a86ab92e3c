"""The intervention strategy: one small object per change made to an MLM during training or evaluation.

An intervention is attached to a loaded MLM (``attach``), may ask for image keys captured with gradients
(``grad_layers``) and add an auxiliary loss (``loss``), may need to see each batch before the forward
(``on_batch``: e.g. to know where the image spans are), and owns the trainable tensors that a checkpoint
keeps (``trainable_state_dict`` / ``load_trainable_state_dict``). ``detach`` removes every hook it placed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn


class Intervention(nn.Module):
    """Base class; subclasses override only what their one job needs.

    Subclasses are ``nn.Module``s so that Lightning moves their trainable tensors to the right device and
    the optimizer sees them through ``VKVModule.parameters()``. The MLM itself is never registered as a
    submodule of an intervention (that would put the whole model into every checkpoint).
    """

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._mlm: Any = None

    @property
    def attached(self) -> bool:
        return self._mlm is not None

    def attach(self, mlm: Any) -> None:
        """Install this intervention on ``mlm`` (hooks, adapters, tokens). Called once, after loading."""
        self._mlm = mlm

    def detach(self) -> None:
        """Remove every hook this intervention placed; safe to call twice."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._mlm = None

    def prompt_prefix(self) -> str | None:
        """Text this intervention needs placed immediately before the image(s) of every prompt."""
        return None

    def grad_layers(self) -> list[int]:
        """LM layers whose image keys ``loss`` reads; captured with ``grad=True`` during training."""
        return []

    def on_batch(self, batch: Any) -> None:
        """See the encoded batch (``batch.spans``...) right before the model's forward."""

    def loss(self, kv: Any, batch: Any) -> torch.Tensor | None:
        """Auxiliary loss from captured KV (``kv.image(layer, b, i).keys`` with gradients), or None."""
        return None

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors this intervention trains (what a checkpoint keeps); detached, any device."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``trainable_state_dict``; raises on missing or unexpected keys."""
        own = dict(self.named_parameters())
        missing = sorted(set(k for k, p in own.items() if p.requires_grad) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}: checkpoint tensors do not match (missing={missing}, "
                f"unexpected={unexpected}); was it saved with the same recipe?"
            )
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value.to(own[name].device, own[name].dtype))

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters living outside this module (e.g. LoRA weights injected into the MLM)."""
        return []

    def init_args(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this intervention (stored in checkpoints; plain values only)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names}

    def spec(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``, the recipe form of this intervention."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}
