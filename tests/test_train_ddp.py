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
