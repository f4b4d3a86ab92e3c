"""The offline .wandb reader against rows written by wandb itself, including records split across blocks."""

from __future__ import annotations

import pytest

from vkvtrain.wandb_offline import BLOCK, find_run_file, history, payloads


def test_reader_returns_exactly_what_wandb_logged(tmp_path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="reader-test", mode="offline", dir=str(tmp_path), settings=wandb.Settings(silent=True))
    logged = []
    for step in range(40):  # ~40 x 2.5 KB rows: several 32 KiB blocks, records cross block boundaries
        row = {"val/probe/fewshot/miou/layer_3": step / 7, "text": "x" * 2500 + str(step), "n": step}
        run.log(row, step=step)
        logged.append(row)
    run.finish()
    path = find_run_file(tmp_path)
    assert path.stat().st_size > 3 * BLOCK
    rows = [r for r in history(path) if "n" in r]
    assert [r["n"] for r in rows] == list(range(40))
    for got, want in zip(rows, logged):
        assert got["val/probe/fewshot/miou/layer_3"] == pytest.approx(want["val/probe/fewshot/miou/layer_3"])
        assert got["text"] == want["text"]
    assert sum(1 for _ in payloads(path)) > 40


def test_reader_rejects_other_files(tmp_path) -> None:
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(payloads(bogus))
    with pytest.raises(FileNotFoundError):
        find_run_file(tmp_path / "empty")
