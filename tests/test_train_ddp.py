"""ddp_spawn works because the HF model is built in configure_model(); results come back to the main process."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers_train import REPO


def test_late_lora_recipe_under_ddp_spawn(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "vkvtrain", "fit", str(REPO / "recipes" / "tiny" / "late_lora.yaml"),
            "trainer.devices=2", "trainer.strategy=ddp_spawn", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "--trainer.logger=false", f"trainer.default_root_dir={tmp_path}", "trainer.limit_val_batches=1"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # one run folder for both processes
    assert (run / "peft_adapter_0" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))  # checkpoints written by rank 0


def _run_fit(script_args: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers_train_ddp.py"), *script_args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ddp_equals_one_process_with_answers_of_different_lengths(tmp_path) -> None:
    """2-process DDP (2 x 2 rows) trains the same tensors as one process on the same 4-row global batches:
    the loss is normalised by the global answer-token count. Control: per-process means train elsewhere."""
    import torch

    from helpers_train_ddp import write_data

    data = str(tmp_path / "data")
    write_data(data)
    _run_fit([data, str(tmp_path / "one.pt"), "--devices", "1"], tmp_path)
    _run_fit([data, str(tmp_path / "ddp.pt"), "--devices", "2"], tmp_path)
    _run_fit([data, str(tmp_path / "control.pt"), "--devices", "2", "--per_process_mean"], tmp_path)
    one, ddp, control = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["interventions.0.vectors"]
                         for n in ("one", "ddp", "control"))
    torch.testing.assert_close(ddp, one, rtol=1e-5, atol=1e-6)
    assert (control - one).abs().max() > 1e-3
