"""The offline .wandb reader against rows written by wandb itself, including records split across blocks, and
its wait for a run file that W&B's service is still writing."""

from __future__ import annotations

import threading
import time

import pytest

from vkvtrain.wandb_offline import BLOCK, find_run_file, history, is_complete, payloads


def _logged_run(tmp_path, monkeypatch) -> tuple[list[dict], object]:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="reader-test", mode="offline", dir=str(tmp_path), settings=wandb.Settings(silent=True))
    logged = []
    for step in range(40):  # ~40 x 2.5 KB rows: several 32 KiB blocks, records cross block boundaries
        row = {"val/probe/fewshot/miou/layer_3": step / 7, "text": "x" * 2500 + str(step), "n": step}
        run.log(row, step=step)
        logged.append(row)
    run.finish()
    return logged, run


def test_reader_returns_exactly_what_wandb_logged(tmp_path, monkeypatch) -> None:
    logged, _ = _logged_run(tmp_path, monkeypatch)
    path = find_run_file(tmp_path)
    rows = [r for r in history(path) if "n" in r]  # waits until W&B's writer has finished the file
    assert path.stat().st_size > 3 * BLOCK
    assert [r["n"] for r in rows] == list(range(40))
    for got, want in zip(rows, logged):
        assert got["val/probe/fewshot/miou/layer_3"] == pytest.approx(want["val/probe/fewshot/miou/layer_3"])
        assert got["text"] == want["text"]
    assert sum(1 for _ in payloads(path)) > 40


def test_history_waits_for_a_file_still_being_written(tmp_path, monkeypatch) -> None:
    """Planted: the first blocks of a finished run (what a reader saw while W&B's service still wrote), then the
    rest appended later. history() must not return the partial rows."""
    _logged_run(tmp_path / "src", monkeypatch)
    source = find_run_file(tmp_path / "src")
    history(source)  # complete
    data = source.read_bytes()
    partial = tmp_path / "run-partial.wandb"
    partial.write_bytes(data[: 3 * BLOCK])
    assert not is_complete(partial)
    with pytest.raises(TimeoutError, match="still incomplete"):
        history(partial, wait=0.5)
    assert len(history(partial, wait=None)) < 40  # what the flaky tests used to read

    def finish_later() -> None:
        time.sleep(0.6)
        with open(partial, "ab") as handle:
            handle.write(data[3 * BLOCK:])

    writer = threading.Thread(target=finish_later)
    writer.start()
    rows = [r for r in history(partial, wait=20) if "n" in r]
    writer.join()
    assert [r["n"] for r in rows] == list(range(40))


def test_reader_rejects_other_files(tmp_path) -> None:
    bogus = tmp_path / "run-x.wandb"
    bogus.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        list(payloads(bogus))
    with pytest.raises(FileNotFoundError):
        find_run_file(tmp_path / "empty")
