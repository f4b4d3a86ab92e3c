"""Output locations: every command checks them before expensive work and fails in one line naming them; files and
caches get the usual (umask) permissions; a checkpoint that is not on disk after a save is an error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import vkvtrain
import vkvtrain.kv_command
import vkvtrain.models.loading
from helpers_train import tiny_recipe
from vkvtrain.cli import main
from vkvtrain.errors import OutputError
from vkvtrain.training_cli import SafeCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any command gets as far as loading model weights."""
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the output location was checked")

    for owner in (vkvtrain, vkvtrain.models.loading, vkvtrain.kv_command):
        monkeypatch.setattr(owner, "load_mlm", load)


def _blocked(tmp_path: Path, kind: str) -> Path:
    """A location no process can write to: under a regular file, or in a read-only folder."""
    if kind == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file" / "out"
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


KINDS = ["under_a_file", pytest.param("read_only", marks=pytest.mark.skipif(
    AS_ROOT, reason="root writes into read-only folders; the under_a_file case covers root"))]


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_refuses_an_unwritable_output_in_one_line(tmp_path, capsys, no_model_loads, kind) -> None:
    blocked = _blocked(tmp_path, kind)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    cases = [
        ("fit", [str(tiny_recipe(tmp_path)), f"trainer.default_root_dir={blocked}"], "trainer.default_root_dir"),
        ("evaluate", [str(ROOT / "eval" / "blink.yaml"), "--model", "tiny://llava_onevision", "--data.source",
                      "synthetic", "--output_dir", str(blocked)], "output_dir"),
        ("evaluate", [str(ROOT / "eval" / "blink.yaml"), "--model", "tiny://llava_onevision", "--output_dir",
                      str(tmp_path / "ok"), "--wandb.project", "p", "--wandb.save_dir", str(blocked)], "wandb.save_dir"),
        ("probe", ["--model", "tiny://llava_onevision", "--output_dir", str(blocked)], "output_dir"),
        ("kv", ["tiny://llava_onevision", "--image", str(image), "--out", str(blocked / "kv.safetensors")], "--out"),
        ("tiny", ["llava_next", "--out", str(blocked)], "--out"),
    ]
    for command, argv, named in cases:
        assert main([command, *argv]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(f"vkvtrain {command}: {named} ") and len(err.strip().splitlines()) == 1, err
        assert str(blocked).split("/out")[0] in err
    assert not (tmp_path / "ok").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_tiny_outputs_and_cache_follow_the_umask(tmp_path, monkeypatch, umask) -> None:
    from vkvtrain.models.tiny import ensure_tiny

    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    previous = os.umask(umask)
    try:
        assert main(["tiny", "llava_next", "--out", str(tmp_path / "m")]) == 0
        cached = ensure_tiny("llava_next")
    finally:
        os.umask(previous)
    for folder in (tmp_path / "m", cached):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
        for file in folder.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file


def test_checkpoints_get_the_usual_mode_and_a_failed_save_is_an_error(tmp_path, monkeypatch) -> None:
    io = SafeCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(3))

    def refused(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OutputError, match="cannot write checkpoint .*Permission denied"):
        io.save_checkpoint({"state_dict": {}}, tmp_path / "ckpts" / "next.ckpt")
    monkeypatch.setattr(os, "replace", lambda src, dst: None)  # a writer that "succeeds" but leaves nothing
    with pytest.raises(OutputError, match="was not written"):
        io.save_checkpoint({"state_dict": {}}, tmp_path / "ckpts" / "other.ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_fit_fails_in_one_line_when_a_checkpoint_cannot_be_written(tmp_path, capsys) -> None:
    """Lightning's own writer swallows PermissionError (exit 0, no checkpoint); vkvtrain's names the file."""
    argv = ["fit", str(tiny_recipe(tmp_path)), "--trainer.logger=false", "--model.probe_tasks=null",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "--trainer.callbacks+=helpers_train.BlockCheckpoints"]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("vkvtrain fit: cannot ") and "checkpoints" in last


def test_build_in_place_installs_whole_builds_only(tmp_path: Path) -> None:
    from vkvtrain.outputs import build_in_place

    def write(marker: bool):
        def build(folder: Path) -> None:
            (folder / "weights").write_text("w")
            (folder / "weights").chmod(0o600)  # as save_pretrained's safetensors writer leaves it
            if marker:
                (folder / "done.json").write_text("{}")
        return build

    target = build_in_place(tmp_path / "a", "done.json", write(True), prefix=".a-")
    assert sorted(p.name for p in target.iterdir()) == ["done.json", "weights"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((target / "weights").stat().st_mode) == 0o666 & ~umask

    def interrupted(folder: Path) -> None:
        (folder / "half").write_text("h")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_in_place(tmp_path / "b", "done.json", interrupted, prefix=".b-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing at b, no staging folder left
    # a concurrent build that finished first (its marker present) is kept; a folder without one is an error
    build_in_place(target, "done.json", write(True), prefix=".a-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "stray").write_text("s")
    with pytest.raises(OutputError, match="cannot move the finished build into"):
        build_in_place(tmp_path / "c", "done.json", write(True), prefix=".c-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]
