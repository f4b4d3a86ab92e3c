"""`make demo` (python -m vkvtrain.demo): the tiny prefix recipe end to end, reporting its own run's outputs."""

from __future__ import annotations

import re
from pathlib import Path

from vkvtrain.demo import main


def test_demo_reports_this_runs_wandb_run_and_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    for _ in range(2):  # a second run must report its own run and checkpoint, not the first one's
        assert main(["--steps", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out.split("recipe prefix.yaml")[-1]
    run_id = re.search(r"W&B offline run: \S+offline-run-\d+_\d+-(\w+)", text).group(1)
    ckpt = Path(re.search(r"checkpoint \(prefix vectors \+ recipe only\): (\S+)", text).group(1))
    assert ckpt.is_file() and ckpt.parent.parent.name == run_id
    assert re.search(r"val/split_keys/agnosticism/layer_3\s+[\d.]+\s+[\d.]+", text)  # before and after columns
    assert re.search(r"val/loss [\d.]+ -> [\d.]+", text)
