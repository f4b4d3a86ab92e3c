"""The intervention strategy: one small object per change made to an MLM during training or evaluation.

An intervention is attached to a loaded MLM (``attach``), may ask for image keys captured with gradients
(``grad_layers``) and add an auxiliary loss (``loss``), may need to see each batch before the forward
(``on_batch``), may choose what it changes from data (``needs_calibration`` / ``calibrate``), owns the
trainable tensors that a checkpoint keeps (``trainable_state_dict`` / ``load_trainable_state_dict``), can write
a standard artifact of itself (``export``) and says what was applied (``record``). Every capability is a method
of this base class with a no-op default, so callers never probe for attributes. ``detach`` removes every hook.

`attach_interventions` is the one way interventions are put on a model: training, checkpoint restore and
evaluation all go through it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vkvtrain.capture import KVCapture
from vkvtrain.mlm import MLM
from vkvtrain.prompts import EncodedBatch


class Intervention(nn.Module):
    """Base class; subclasses override only what their one job needs.

    Subclasses are ``nn.Module``s so that Lightning moves their trainable tensors to the right device and
    the optimizer sees them through ``VKVModule.parameters()``. The MLM itself is never registered as a
    submodule of an intervention (that would put the whole model into every checkpoint).
    """

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._mlm: MLM | None = None

    @property
    def mlm(self) -> MLM:
        """The MLM this intervention is attached to."""
        if self._mlm is None:
            raise RuntimeError(f"{type(self).__name__} is not attached: call attach(mlm) first.")
        return self._mlm

    def attach(self, mlm: MLM) -> None:
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

    def on_batch(self, batch: EncodedBatch) -> None:
        """See the encoded batch (``batch.spans``...) right before the model's forward."""

    def loss(self, kv: KVCapture | None, batch: EncodedBatch) -> torch.Tensor | None:
        """Auxiliary loss from KV captured at ``grad_layers`` (``kv.image(layer, b, i).keys`` with gradients;
        None when no intervention asked for layers), or None."""
        return None

    @property
    def needs_calibration(self) -> bool:
        """Whether ``calibrate`` must run on data before this intervention can act."""
        return False

    def calibrate(self, mlm: MLM, batches: Sequence[EncodedBatch]) -> Any:
        """Choose what to change from encoded batches of real prompts (their answers unused); returns the choice."""
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

    def export(self, parent: Path, index: int) -> Path | None:
        """Write intervention number ``index`` of a run in a standard format other tools load (e.g. a peft
        adapter folder) inside ``parent``; returns what was written, or None when there is no such format."""
        return None

    def init_args(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this intervention (stored in checkpoints; plain values only)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names}

    def spec(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``, the recipe form of this intervention."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.init_args()}

    def record(self) -> dict[str, Any]:
        """What was applied, for results files: the spec plus anything chosen from data (e.g. positions)."""
        return self.spec()


def attach_interventions(mlm: MLM, interventions: Iterable[Intervention]) -> None:
    """Attach each intervention to ``mlm`` in order and move its tensors to the model's device."""
    for intervention in interventions:
        intervention.attach(mlm)
        intervention.to(mlm.device)


def prompt_prefix(interventions: Iterable[Intervention]) -> str | None:
    """The text the interventions need right before the image(s) (e.g. learned-prefix placeholders)."""
    parts = [p for iv in interventions if (p := iv.prompt_prefix())]
    return "".join(parts) or None


def calibrate_interventions(mlm: MLM, interventions: Iterable[Intervention],
                            batches: Sequence[EncodedBatch]) -> dict[str, Any]:
    """Run ``calibrate`` of every intervention that needs it, the model in eval mode; returns the choices
    by ``"<index>:<class name>"``."""
    pending = [(i, iv) for i, iv in enumerate(interventions) if iv.needs_calibration]
    if not pending:
        return {}
    was_training = mlm.model.training
    mlm.model.eval()
    try:
        return {f"{i}:{type(iv).__name__}": iv.calibrate(mlm, batches) for i, iv in pending}
    finally:
        mlm.model.train(was_training)
