"""Every run writes into its own folder under trainer.default_root_dir: nothing a previous run wrote is replaced,
concurrent runs in one root never mix their files, and `--ckpt_path last` resumes the newest run."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers_train import REPO, tiny_recipe
from vkvtrain.checkpointing import CHECKPOINT_KEY
from vkvtrain.cli import main
from vkvtrain.run_dir import latest_checkpoint, reserve_run_dir

LATE_LORA = REPO / "recipes" / "tiny" / "late_lora.yaml"


def _recipe(tmp_path: Path) -> Path:
    """The tiny late-LoRA recipe (peft adapter + W&B + checkpoints + config) with outputs under tmp_path/run."""
    recipe = yaml.safe_load(LATE_LORA.read_text())
    recipe["trainer"].update(default_root_dir=str(tmp_path / "run"), max_steps=2, val_check_interval=2,
                             limit_val_batches=1)
    recipe["model"]["probe_tasks"] = None
    path = tmp_path / "late_lora.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start(recipe: Path, seed: int, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WANDB_SERVICE", None)  # each run starts its own W&B service (see test_wandb_logging)
    return subprocess.Popen([sys.executable, "-m", "vkvtrain", "fit", str(recipe), f"seed_everything={seed}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "wandb" not in p.parts}


@pytest.mark.slow
def test_runs_into_one_root_get_their_own_folders(tmp_path) -> None:
    recipe = _recipe(tmp_path)
    _finish(_start(recipe, 1, tmp_path))
    (first,) = (tmp_path / "run").iterdir()
    before = _digest(first)
    assert {"config.yaml", "checkpoints/last.ckpt", "peft_adapter_0/adapter_model.safetensors"} <= set(before)
    concurrent = [_start(recipe, seed, tmp_path) for seed in (2, 3)]  # same root, same second
    outputs = [_finish(proc) for proc in concurrent]
    runs = sorted((tmp_path / "run").iterdir())
    assert len(runs) == 3 and _digest(first) == before  # nothing the first run wrote was replaced
    printed = {Path(m.group(1)) for out in outputs for m in [re.search(r"^  run folder +(\S+)$", out, re.M)] if m}
    assert printed == set(runs[1:])  # each process names its own folder
    seeds = set()
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        recipe_seed = yaml.safe_load(checkpoint[CHECKPOINT_KEY]["recipe"])["fit"]["seed_everything"]
        assert config["seed_everything"] == recipe_seed  # config and checkpoint of the same run
        assert config["trainer"]["default_root_dir"] == str(tmp_path / "run")  # the recipe as given
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # its own W&B run only
        assert (run / "peft_adapter_0" / "adapter_model.safetensors").is_file()
        seeds.add(recipe_seed)
    assert seeds == {1, 2, 3}

    # --ckpt_path last: the newest run's last.ckpt, resumed into a fourth folder
    newest = latest_checkpoint(tmp_path / "run")
    assert newest == max((r / "checkpoints" / "last.ckpt" for r in runs), key=lambda p: p.stat().st_mtime)
    assert main(["fit", str(recipe), "--ckpt_path", "last", "trainer.max_steps=3", "--trainer.logger=false"]) == 0
    resumed = [r for r in (tmp_path / "run").iterdir() if r not in runs]
    assert len(resumed) == 1
    step = torch.load(resumed[0] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step == 3  # continued from step 2 of the newest run


def test_reserving_is_atomic_per_name(tmp_path, monkeypatch) -> None:
    """Two reservations in the same second get different folders."""
    monkeypatch.setattr(time, "strftime", lambda fmt: "20990101-000000")
    names = {reserve_run_dir(tmp_path).name for _ in range(3)}
    assert names == {"20990101-000000", "20990101-000000-1", "20990101-000000-2"}
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert reserve_run_dir(tmp_path) == reserve_run_dir(tmp_path) == tmp_path / "slurm-12"  # a requeued job


def test_one_key_decides_where_outputs_go(tmp_path, capsys) -> None:
    """A logger save_dir or a checkpoint dirpath of its own would split a run's outputs: refused."""
    recipe = tiny_recipe(tmp_path)
    assert main(["fit", str(recipe), f"--trainer.logger.init_args.save_dir={tmp_path / 'elsewhere'}"]) == 2
    assert "remove save_dir" in capsys.readouterr().err
    assert main(["fit", str(recipe), f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpts'}"]) == 2
    assert "remove dirpath" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("*"))
