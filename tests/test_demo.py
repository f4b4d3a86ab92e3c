"""`make demo` (python -m vkvtrain demo): the tiny prefix recipe end to end, reporting its own run's outputs."""

from __future__ import annotations

import re
from pathlib import Path

from vkvtrain.cli import main


def test_demo_reports_this_runs_wandb_run_and_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    runs = []
    for _ in range(2):  # a second run reports its own run folder, W&B run and checkpoint, and replaces nothing
        assert main(["demo", "--steps", "2", "--out", str(out)]) == 0
        text = capsys.readouterr().out.split("recipe prefix.yaml")[-1]
        run = Path(re.search(r"^  run folder +(\S+)$", text, re.M).group(1))
        wandb_run = Path(re.search(r"^  W&B run +(\S+offline-run-\d+_\d+-\w+)$", text, re.M).group(1))
        ckpt = Path(re.search(r"^  checkpoint \(last\) +(\S+)$", text, re.M).group(1))
        assert run.parent == out and wandb_run.parent == run / "wandb" and ckpt == run / "checkpoints" / "last.ckpt"
        assert re.search(r"val/data/key_agnosticism/score/layer_3\s+[\d.]+\s+[\d.]+", text)  # before and after
        assert re.search(r"^  val/loss +[\d.]+ -> [\d.]+$", text, re.M)
        runs.append((run, ckpt.stat().st_mtime_ns, ckpt.read_bytes()))
    (first, mtime, content), (second, _, _) = runs
    assert first != second and (first / "checkpoints" / "last.ckpt").read_bytes() == content
    assert (first / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
