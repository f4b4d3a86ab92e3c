"""No code runs from a checkpoint: every path by which fit/validate/test/evaluate read one goes through
torch.load(weights_only=True), remote ones are refused, and bad files end in one line (exit 2).

Each test plants a harmless payload that creates a marker file if it is ever unpickled unsafely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers_train import TINY_PREFIX, tiny_recipe
from vkvtrain.cli import main
from vkvtrain.errors import CheckpointError

COMMON = ["--trainer.logger=false", "--model.probe_tasks=null", "trainer.limit_val_batches=1"]


class Payload:
    """Unpickling this object calls open(marker, "w"): the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "vkvtrain": {"recipe": Payload(marker)}}, path)
    return path


def test_the_payload_is_live(tmp_path) -> None:
    """Loaded the unsafe way, the planted file does run code (so the tests below can fail)."""
    marker = tmp_path / "marker"
    torch.load(plant(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()


def _one_line_refusal(capsys, command: str, *needles: str) -> None:
    """The error is one line, the last on stderr (a started run may print Lightning's info lines before it)."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"vkvtrain {command}: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in last, err


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_local_payload_is_refused(tmp_path, capsys, command) -> None:
    marker = tmp_path / "marker"
    ckpt = plant(tmp_path / "evil.ckpt", marker)
    assert main([command, str(tiny_recipe(tmp_path)), *COMMON, f"--ckpt_path={ckpt}", "--weights_only=false"]) == 2
    _one_line_refusal(capsys, command, "io.open", "weights_only=True")
    assert not marker.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/evil.ckpt", "https://example.org/a.ckpt", "s3://bucket/a.ckpt",
                                 "registry", "registry:team/model:v1"])
def test_remote_checkpoints_are_refused_before_any_download(tmp_path, capsys, monkeypatch, url) -> None:
    def download(*args, **kwargs):
        raise AssertionError("a remote checkpoint was fetched")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    assert main(["fit", str(tiny_recipe(tmp_path)), *COMMON, "--ckpt_path", url]) == 2
    _one_line_refusal(capsys, "fit", "remote", "local")
    assert main(["evaluate", "--model", "tiny://llava_onevision", "--ckpt_path", url,
                 "--output_dir", str(tmp_path / "eval")]) == 2
    _one_line_refusal(capsys, "evaluate", "remote")


def test_last_resolves_to_the_newest_run_and_is_read_safely(tmp_path, capsys) -> None:
    marker = tmp_path / "marker"
    recipe = tiny_recipe(tmp_path)
    assert main(["fit", str(recipe), *COMMON, "--ckpt_path", "last"]) == 2  # no run yet
    _one_line_refusal(capsys, "fit", "no run under", "checkpoints/last.ckpt")
    old = plant(tmp_path / "run" / "20200101-000000" / "checkpoints" / "last.ckpt", tmp_path / "other")
    new = plant(tmp_path / "run" / "20200102-000000" / "checkpoints" / "last.ckpt", marker)
    assert old.stat().st_mtime_ns <= new.stat().st_mtime_ns
    assert main(["fit", str(recipe), *COMMON, "--ckpt_path", "last"]) == 2
    _one_line_refusal(capsys, "fit", str(new), "io.open")
    assert not marker.exists() and not (tmp_path / "other").exists()


def test_hpc_checkpoint_found_by_lightning_is_read_safely(tmp_path, capsys, monkeypatch) -> None:
    """Lightning finds hpc_ckpt_<n>.ckpt in the run folder itself (a requeued SLURM job's folder) and reads it
    through the trainer's CheckpointIO: vkvtrain's, with weights_only=True."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    marker = tmp_path / "marker"
    plant(tmp_path / "run" / "slurm-77" / "hpc_ckpt_1.ckpt", marker)
    assert main(["fit", str(tiny_recipe(tmp_path)), *COMMON, "--ckpt_path", "hpc", "trainer.max_steps=1"]) == 2
    _one_line_refusal(capsys, "fit", "hpc_ckpt_1.ckpt", "io.open")
    assert not marker.exists()


def test_best_checkpoint_of_a_fit_is_read_safely(tmp_path, capsys) -> None:
    from vkvtrain.training_cli import build_cli

    assert main(["validate", str(tiny_recipe(tmp_path)), *COMMON, "--ckpt_path", "best"]) == 2
    _one_line_refusal(capsys, "validate", "best")
    cli = build_cli(["fit", str(TINY_PREFIX), *COMMON, f"trainer.default_root_dir={tmp_path / 'run'}",
                     "trainer.max_steps=2", "trainer.val_check_interval=2"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.is_file()
    marker = tmp_path / "marker"
    plant(best, marker)
    with pytest.raises(CheckpointError, match="io.open"):
        cli.trainer.validate(cli.model, cli.datamodule, ckpt_path="best", weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["text", "truncated", "empty", "folder"])
def test_unreadable_checkpoint_files_are_one_line_errors(tmp_path, capsys, kind) -> None:
    ckpt = tmp_path / "bad.ckpt"
    if kind == "text":
        ckpt.write_text("this is a text file, not a checkpoint\n")
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:2000])
    elif kind == "empty":
        ckpt.write_bytes(b"")
    else:
        ckpt.mkdir()
    reason = "is a folder" if kind == "folder" else "not a readable PyTorch checkpoint"
    for command in ("fit", "validate"):
        assert main([command, str(tiny_recipe(tmp_path)), *COMMON, f"--ckpt_path={ckpt}"]) == 2
        _one_line_refusal(capsys, command, reason)
    assert main(["evaluate", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eval")]) == 2
    _one_line_refusal(capsys, "evaluate", reason)
