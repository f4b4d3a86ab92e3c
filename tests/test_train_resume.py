"""Resume after a kill at ANY step equals the uninterrupted run, bitwise (every step of a 2-epoch run, the
epochs' last batches included: what kill -9 during end-of-epoch validation leaves)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers_train import blink_source
from lightning.pytorch.callbacks import ModelCheckpoint

from vkvtrain.datamodule import VKVDataModule
from vkvtrain.errors import DatasetError
from vkvtrain.interventions import LearnedPrefix
from vkvtrain.module import VKVModule

BATCHES_PER_EPOCH = 3  # 6 rows, batch 2
EPOCHS = 2


def _data() -> VKVDataModule:
    return VKVDataModule(train=blink_source("train", n=3), val=blink_source("val", n=1), batch_size=2)


def _fit(root: Path, ckpt: Path | None = None, save_every_step: bool = False) -> VKVModule:
    L.seed_everything(0)
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2)], learning_rate=0.05)
    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)] if save_every_step else []
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_checkpointing=save_every_step,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=root,
    )
    trainer.fit(module, _data(), ckpt_path=ckpt)
    assert trainer.global_step == EPOCHS * BATCHES_PER_EPOCH
    return module


def test_resume_from_every_step_of_two_epochs_equals_uninterrupted(tmp_path: Path) -> None:
    full_module = _fit(tmp_path / "full", save_every_step=True)
    expected = full_module.state_dict()["interventions.0.vectors"]
    checkpoints = sorted((tmp_path / "full" / "ckpt").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    steps = [int(torch.load(p, weights_only=True)["global_step"]) for p in checkpoints]
    assert steps == list(range(1, EPOCHS * BATCHES_PER_EPOCH + 1))
    for step, ckpt in zip(steps[:-1], checkpoints[:-1]):
        resumed = _fit(tmp_path / f"resume_{step}", ckpt=ckpt).state_dict()["interventions.0.vectors"]
        assert torch.equal(resumed, expected), f"resume from step {step} differs"


def test_fewer_rows_than_a_batch_is_an_error_not_an_empty_run(tmp_path: Path) -> None:
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2)])
    data = VKVDataModule(train=blink_source("train", n=1, subtasks="Counting"), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"has 1 row\(s\), fewer than one training batch \(4 per device x 1"):
        trainer.fit(module, data)
