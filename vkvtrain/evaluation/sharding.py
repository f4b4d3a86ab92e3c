"""Splitting an evaluation over processes: which batches a process answers, and how results come back.

The questions are sorted by length and cut into batches exactly as one process would; process ``rank`` of
``world_size`` answers batches ``rank, rank + world_size, ...``. Every batch is therefore computed with the same
rows and padding as in a single-process run, so the gathered records are identical to it. All processes take
the same number of steps (the last ones may be empty) and add up their counts after each step, which lets
rank 0 show the overall progress.

:class:`Shard` wraps a ``lightning.fabric.Fabric`` (or nothing, for one process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Shard:
    """This process's part of a sharded evaluation. Without ``fabric``: the whole job, one process."""

    rank: int = 0
    world_size: int = 1
    fabric: Any = None

    @classmethod
    def of(cls, fabric: Any) -> Shard:
        return cls(rank=int(fabric.global_rank), world_size=int(fabric.world_size), fabric=fabric)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def steps(self, n_batches: int) -> int:
        """Loop steps every process runs (the same on all, so per-step collectives line up)."""
        return math.ceil(n_batches / self.world_size)

    def batch_at(self, step: int) -> int:
        """Index of the batch this process answers at ``step`` (may be past the last batch: nothing to do)."""
        return step * self.world_size + self.rank

    def total(self, count: int) -> int:
        """Sum of ``count`` over all processes."""
        if self.fabric is None or self.world_size == 1:
            return count
        summed = self.fabric.all_reduce(torch.tensor(count, device=self.fabric.device), reduce_op="sum")
        return int(summed.item())

    def gather(self, items: list[T]) -> list[T]:
        """Every process's ``items`` concatenated in rank order (Python objects, via torch.distributed)."""
        if self.fabric is None or self.world_size == 1:
            return list(items)
        parts: list[list[T] | None] = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in (part or [])]
