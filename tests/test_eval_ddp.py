"""`evaluate --devices 2` (2 gloo processes, Lightning Fabric's ddp: the command re-runs itself per device) writes
the same responses and results as one process; its progress bar counts both processes' questions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_blink import one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain.cli import main

REPO = Path(__file__).resolve().parents[1]


def _args(out: Path) -> list[str]:
    # 14 questions in batches of 5: 3 batches, so one process answers two and the other one. Likelihood mode
    # writes float scores, which change in their last bits when a batch holds other rows or padding.
    return ["evaluate", str(REPO / "eval" / "blink.yaml"), "--model", "tiny://llava_onevision", "--data.source",
            "synthetic", "--data.synthetic_n", "1", "--mode", "likelihood", "--batch_size", "5",
            "--probes.probe_layer", "-1", "--output_dir", str(out), "--device", "cpu"]


def _results(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    assert res.pop("processes") in (1, 2)
    for key in ("devices", "output_dir"):  # the only configuration that differs between the two runs
        res["config"].pop(key)
    return res


def test_two_processes_write_what_one_process_writes(tmp_path: Path) -> None:
    assert main(_args(tmp_path / "single")) == 0  # in this process, on one thread
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    double = subprocess.run([sys.executable, "-m", "vkvtrain", *_args(tmp_path / "double"), "--devices", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads((tmp_path / "double" / "results.json").read_text())["processes"] == 2
    one = (tmp_path / "single" / "responses.jsonl").read_text()
    assert (tmp_path / "double" / "responses.jsonl").read_text() == one and len(one.splitlines()) == 14
    assert _results(tmp_path / "double") == _results(tmp_path / "single")
    assert "latent" in _results(tmp_path / "single")  # the probes ran in both
    bar = double.stderr.replace("\r", "\n").splitlines()
    assert any("2 processes" in line and "14/14" in line and "q/s" in line for line in bar), double.stderr[-2000:]
    assert double.stdout.count("== evaluate") == 1  # rank 0 alone prints and writes
