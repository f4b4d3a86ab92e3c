"""The tiny recipe through `python -m vkvtrain fit` with an offline WandbLogger: probe metrics per layer and the
layer x task heatmap land in the .wandb run file; the same recipe under 2-process DDP logs the same names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_train import REPO, tiny_recipe
from vkvtrain.wandb_offline import find_run_file, history

N_LAYERS = 4  # tiny checkpoints


def _fit(tmp: Path, *extra: str) -> Path:
    recipe = tiny_recipe(tmp, **{"trainer.max_steps": 2, "trainer.val_check_interval": 2})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO)}
    # A wandb run earlier in this pytest process exports WANDB_SERVICE; a child attached to that service
    # would return before the service has written its run file. Give the child its own service.
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.run([sys.executable, "-m", "vkvtrain", "fit", str(recipe), *extra], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = list((tmp / "run").iterdir())  # one run folder, shared by every DDP process
    return find_run_file(run)


def _metric_names(run_file: Path) -> set[str]:
    return {key for row in history(run_file) for key in row if not key.startswith("_")}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fit(tmp_path_factory.mktemp("single"))


def test_probe_metrics_per_layer_and_heatmap_in_offline_run(single_run: Path) -> None:
    rows = history(single_run)
    names = _metric_names(single_run)
    probe_metrics = {"fewshot": ["miou", "fbiou"], "coseg": ["jaccard", "precision"], "semantic": ["miou", "ciou"],
                     "referring": ["miou", "ciou"], "keypoints": ["pck"], "temporal": ["j", "f", "jf"],
                     "key_agnosticism": ["score", "n_flagged"]}
    for layer in range(N_LAYERS):
        for task, metrics in probe_metrics.items():
            for metric in metrics:
                assert f"val/probe/{task}/{metric}/layer_{layer}" in names, (task, metric, layer)
        # measured on the recipe's validation split (data/) vs the probe suite's own images (probe/)
        assert f"val/data/key_agnosticism/score/layer_{layer}" in names
        assert f"val/data/gap_all/Visual_Correspondence/layer_{layer}" in names
        assert f"val/data/probe_accuracy/Visual_Correspondence/layer_{layer}" in names
    values = [row[f"val/data/key_agnosticism/score/layer_{layer}"] for row in rows for layer in range(N_LAYERS)
              if f"val/data/key_agnosticism/score/layer_{layer}" in row]
    assert len(values) == N_LAYERS and all(0.0 <= v <= 1.0 for v in values)
    heatmap = [row for row in rows if "val/layer_task_heatmap/_type" in row]
    assert heatmap and heatmap[0]["val/layer_task_heatmap/_type"] == "images/separated"
    assert "train/loss" in names and "val/loss" in names


def test_tiny_recipe_under_two_process_ddp_logs_same_metric_names(single_run: Path, tmp_path: Path) -> None:
    ddp_run = _fit(tmp_path, "trainer.devices=2", "trainer.strategy=ddp")
    assert _metric_names(ddp_run) == _metric_names(single_run)
