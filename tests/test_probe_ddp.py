"""Probe metrics reduced over 2 gloo processes equal the single-process result (exact sufficient statistics)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent / "helpers_probes_ddp.py"


def test_probe_metrics_under_two_process_ddp_equal_single_process(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(single), torch.load(ddp)
    assert a.keys() == b.keys() == {"fewshot", "coseg", "grounding", "keypoints", "temporal", "keys"}
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert a[name][key].shape == b[name][key].shape, (name, key)
            if a[name][key].dtype == torch.bool:
                assert torch.equal(a[name][key], b[name][key]), (name, key)
            else:
                assert torch.allclose(a[name][key].double(), b[name][key].double(), atol=1e-6, equal_nan=True), \
                    (name, key, a[name][key], b[name][key])
    # the shard-split run must not be trivially equal because nothing was counted
    assert a["keys"]["n_flagged"].tolist() == [0, 1]
    assert 0 < float(a["fewshot"]["miou"][1]) < 1
