"""Shared helpers of the training tests (recipes written to tmp_path, data sources, NaN intervention)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback

from vkvtrain.data.training import DataSource
from vkvtrain.interventions.base import Intervention

REPO = Path(__file__).resolve().parents[1]
TINY_PREFIX = REPO / "recipes" / "tiny" / "prefix.yaml"
BLINK_COLUMNS = dict(
    image_columns=["image_1", "image_2", "image_3", "image_4"], question_field="prompt", answer_field="answer",
    task_field="sub_task", choices_field="choices", points_field="points",
)


def blink_source(split: str, n: int = 4, subtasks: str = "Visual_Correspondence,Counting", size: int = 32) -> DataSource:
    return DataSource(source=f"synthetic://blink?n_per_subtask={n}&subtasks={subtasks}&image_size={size}",
                      split=split, **BLINK_COLUMNS)


def tiny_recipe(tmp_path: Path, **changes: Any) -> Path:
    """Copy of recipes/tiny/prefix.yaml with outputs under tmp_path and dotted-key changes applied."""
    recipe = yaml.safe_load(TINY_PREFIX.read_text())
    recipe["trainer"]["default_root_dir"] = str(tmp_path / "run")  # each run: its own folder under it
    for dotted, value in changes.items():
        node = recipe
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


class NaNAfter(Intervention):
    """Test intervention: one trainable scalar, a NaN auxiliary loss from training step ``step`` on."""

    def __init__(self, step: int = 2) -> None:
        super().__init__()
        self.step = step
        self.scale = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def loss(self, kv: Any, batch: Any) -> torch.Tensor:
        self.calls += 1
        value = self.scale.pow(2)
        return value * float("nan") if self.calls > self.step else value


class InfGradAt(Intervention):
    """Test intervention: one trainable scalar whose auxiliary loss is finite (0) but, at training step ``step``,
    has an infinite gradient (sqrt at 0), so the optimiser step itself makes the tensor non-finite."""

    def __init__(self, step: int = 2) -> None:
        super().__init__()
        self.step = step
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def loss(self, kv: Any, batch: Any) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.step:
            return (self.scale - self.scale.detach()).sqrt()  # value 0, gradient inf
        return 0.0 * self.scale


class BlockCheckpoints(Callback):
    """Test callback: once training starts, a file stands where the run's checkpoints folder would be."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        folder = Path(trainer.checkpoint_callback.dirpath)
        if folder.is_dir():
            folder.rmdir()
        folder.write_text("in the way")
