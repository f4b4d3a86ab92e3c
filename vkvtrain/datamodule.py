"""VKVDataModule: train/validation splits through `datasets`, encoded by the module's MLM at collate time.

The training loader is resumable mid-epoch: its sampler is a seeded ``DistributedSampler`` (so Lightning does
not re-wrap it under DDP) whose order depends only on (seed, epoch), and the loader's ``state_dict`` records
the epoch and how many of its batches the trainer has processed; after a restore the sampler skips them in that
epoch only (a checkpoint written at an epoch's last batch skips nothing of the next epoch), so a run killed at
any step and resumed sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, DistributedSampler

from vkvtrain.data.collate import TrainingCollator
from vkvtrain.data.training import DataSource, ExampleDataset
from vkvtrain.errors import DatasetError, RecipeError


class SkippingSampler(DistributedSampler):
    """DistributedSampler whose iteration over epoch ``skip_epoch`` drops its first ``skip`` indices (resume)."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0
        self.skip_epoch = -1

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip = self.skip if self.epoch == self.skip_epoch else 0
        self.skip, self.skip_epoch = 0, -1
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """DataLoader with Lightning's ``state_dict``/``load_state_dict`` interface: the epoch and the batches of
    it processed so far, read from ``progress() -> (epoch, batches_done)``."""

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._progress() if self._progress else (0, 0)
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, SkippingSampler)
        done = int(state["batches_done"])
        # a checkpoint from the epoch's last batch: that epoch is over, the next one starts from its beginning
        sampler.skip = done * int(self.batch_size or 1) if done < len(self) else 0
        sampler.skip_epoch = int(state.get("epoch", sampler.epoch))



def _processed(trainer: L.Trainer) -> int:
    """Training batches of the current epoch the trainer has processed."""
    return int(getattr(trainer.fit_loop.epoch_loop.batch_progress.current, "processed"))


class VKVDataModule(L.LightningDataModule):
    """Train and validation data of a recipe.

    Args:
        train: training split (``DataSource``); required for ``fit``.
        val: validation split (also used by ``validate``/``test``); BLINK-style rows with ``choices_field``
            and ``task_field`` also feed the surfacing-gap metric.
        batch_size: prompts per batch (per device).
        val_batch_size: defaults to ``batch_size``.
        num_workers: DataLoader workers (0 keeps encoding in the main process).
        shuffle: shuffle the training split each epoch (seeded; resumable).
        seed: shuffling seed.
        max_length: longest tokenized prompt kept (see ``mlm.encode``).
    """

    def __init__(
        self,
        train: DataSource | None = None,
        val: DataSource | None = None,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise RecipeError(f"data.batch_size must be >= 1, got {batch_size}.")
        self.train_source, self.val_source = train, val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.max_length = max_length
        self.train_set: ExampleDataset | None = None
        self.val_set: ExampleDataset | None = None

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_source is None:
            raise RecipeError("`fit` needs data.train (a DataSource); the recipe's data section has none.")
        if stage == "fit" and self.train_set is None and self.train_source is not None:
            self.train_set = ExampleDataset(self.train_source)
        if stage in ("fit", "validate", "test") and self.val_source is not None and self.val_set is None:
            self.val_set = ExampleDataset(self.val_source)
        if stage in ("validate", "test") and self.val_source is None:
            raise RecipeError(f"`{stage}` needs data.val (a DataSource); the recipe's data section has none.")

    def _trainer_of(self) -> L.Trainer:
        if self.trainer is None:
            raise RecipeError("VKVDataModule's loaders are built by a Trainer (trainer.fit / validate / test).")
        return self.trainer

    def _collator(self) -> TrainingCollator:
        # the module encodes with its MLM: the datamodule holds no model of its own
        module = self._trainer_of().lightning_module
        collator = getattr(module, "collator", None)
        if not callable(collator):
            raise RecipeError("VKVDataModule must be used with VKVModule (it encodes with the module's MLM).")
        made = collator(max_length=self.max_length)
        assert isinstance(made, TrainingCollator)
        return made

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        trainer = self._trainer_of()
        per_step = self.batch_size * trainer.world_size
        if len(self.train_set) < per_step:
            raise DatasetError(
                f"data.train ({self.train_source.source if self.train_source else '?'!r}) has {len(self.train_set)} "
                f"row(s), fewer than one training batch ({self.batch_size} per device x {trainer.world_size} "
                "device(s); incomplete batches are dropped): lower data.batch_size or give more rows."
            )
        sampler = SkippingSampler(
            self.train_set, num_replicas=trainer.world_size, rank=trainer.global_rank,
            shuffle=self.shuffle, seed=self.seed, drop_last=True,
        )
        return ResumableDataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
            collate_fn=self._collator(), num_workers=self.num_workers,
            progress=lambda: (trainer.current_epoch, _processed(trainer)),
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            return []  # type: ignore[return-value]
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False,
                          collate_fn=self._collator(), num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


