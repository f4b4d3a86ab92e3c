"""The probe-task registry: every task is one record, and one record is all a new task needs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from vkvtrain.data.perception import LOADERS
from vkvtrain.data.synthetic_perception import SyntheticSemantic
from vkvtrain.errors import RecipeError
from vkvtrain.probes.base import LayerwiseMetric
from vkvtrain.probes.config import TASKS as CONFIG_TASKS
from vkvtrain.probes.config import PrefixSpec, ProbeConfig
from vkvtrain.probes.report import markdown
from vkvtrain.probes.runners import Table, TaskContext
from vkvtrain.probes.suite import ProbeSuite, make_dataset
from vkvtrain.probes.tasks import REGISTRY, TASKS, ProbeTask


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_record_is_consistent(name: str) -> None:
    task = REGISTRY[name]
    assert task.name == name and task.primary in task.metric.plot_keys
    data = task.synthetic(n=2, size=32, seed=0)
    assert len(data) == 2
    if task.loader is not None:  # the loader and the generator return this task's items
        assert LOADERS[task.loader].task == name and data.task == name
    assert PrefixSpec().task[name] == task.default_prefix


def test_one_name_list_everywhere() -> None:
    assert CONFIG_TASKS is TASKS == tuple(REGISTRY)  # the name the training module imports
    assert ProbeConfig().tasks == list(TASKS)
    assert not hasattr(__import__("vkvtrain.probes.config", fromlist=["x"]), "ProbeOptions")


class MeanTokenNorm(LayerwiseMetric):
    """A new metric for the test: per row, the mean L2 norm of the image tokens."""

    plot_keys = ("norm",)
    total: Tensor
    count: Tensor

    def __init__(self, num_layers: int, **kwargs: Any) -> None:
        super().__init__(num_layers, **kwargs)
        self.add_state("total", torch.zeros(num_layers, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, grids: list[Tensor]) -> None:
        for row, grid in enumerate(grids):
            self.total[row] += float(grid.reshape(-1, grid.shape[-1]).norm(dim=-1).mean())
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        return {"norm": (self.total / self.count).float()}


def run_token_norm(ctx: TaskContext, ds: Any, metric_cls: type[MeanTokenNorm]) -> Table:
    metric = metric_cls(len(ctx.rows), layer_names=ctx.rows)
    for i in range(len(ds)):
        (feats,) = ctx.fx([ds[i].image], prefixes=[ctx.prefix("token_norm", None)])
        metric.update(ctx.grids(feats))
    return ctx.table(metric.compute(), ctx.rows)


def test_a_new_task_is_one_record(tiny_mlm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "token_norm", ProbeTask(
        "token_norm", MeanTokenNorm, "norm", "Look at the {text}.", None, SyntheticSemantic, run_token_norm))
    cfg = ProbeConfig(tasks=["token_norm", "keypoints"], layers=[1], sources=["input_embeds", "layers"],
                      prefix=PrefixSpec(mode="task"), progress=False)
    cfg.data["keypoints"].n = 1
    assert isinstance(make_dataset("token_norm", cfg), SyntheticSemantic)
    suite = ProbeSuite(tiny_mlm("qwen2_5_vl"), cfg)
    assert suite.prefix("token_norm", "circle") == "Look at the circle."
    results = suite.run()
    assert list(results) == ["token_norm", "keypoints"]
    norms = results["token_norm"]["norm"]
    assert list(norms) == ["input_embeds", "1"] and all(math.isfinite(v) and v > 0 for v in norms.values())
    assert "| row | token_norm.norm | keypoints.pck |" in markdown({"m": results})
    with pytest.raises(RecipeError, match="unknown task"):
        ProbeConfig(tasks=["token_norm_typo"])
