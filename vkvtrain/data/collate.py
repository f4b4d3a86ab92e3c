"""TrainingExamples -> one encoded batch with labels on the answer tokens only (``mlm.encode``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vkvtrain.data.training import TrainingExample
from vkvtrain.prompts import EncodedBatch, Prompt


class TrainBatch:
    """An ``EncodedBatch`` (``.encoded``: inputs incl. labels (B, L), spans) plus per-row metadata.

    Deliberately not a dataclass: Lightning moves it with ``.to(device)`` instead of walking its fields.
    """

    def __init__(self, encoded: EncodedBatch, examples: Sequence[TrainingExample]) -> None:
        self.encoded = encoded
        self.tasks = [e.task for e in examples]
        self.answers = [e.answer for e in examples]
        self.choices = [list(e.choices) for e in examples]
        self.points = [dict(e.points) for e in examples]
        self.size = len(examples)

    @property
    def inputs(self) -> dict[str, Any]:
        return self.encoded.inputs

    @property
    def spans(self) -> list:
        return self.encoded.spans

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TrainBatch:
        moved = object.__new__(TrainBatch)
        moved.__dict__.update(self.__dict__)
        moved.encoded = self.encoded.to(device, dtype)
        return moved

    def __len__(self) -> int:
        return self.size


class TrainingCollator:
    """Callable collate_fn: prompts built with an optional text prefix before the images and the answer.

    Args:
        mlm: the loaded MLM (its processor and chat template are used; the model is not touched).
        prefix: text placed immediately before the first image (e.g. a learned prefix's placeholders).
        max_length: longest sequence kept (see ``mlm.encode``).
    """

    def __init__(self, mlm: Any, prefix: str | None = None, max_length: int | None = None) -> None:
        self.mlm = mlm
        self.prefix = prefix
        self.max_length = max_length

    def prompts(self, examples: Sequence[TrainingExample]) -> list[Prompt]:
        return [Prompt(images=e.images, text=e.question, prefix=self.prefix, answer=e.answer) for e in examples]

    def __call__(self, examples: Sequence[TrainingExample]) -> TrainBatch:
        encoded = self.mlm.encode(self.prompts(examples), max_length=self.max_length)
        return TrainBatch(encoded, examples)
