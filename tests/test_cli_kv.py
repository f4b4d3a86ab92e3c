"""`python -m vkvtrain kv`: the file layout, metadata, file mode, config files, and bad input that writes nothing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from vkvtrain import Prompt, load_mlm
from vkvtrain.cli import main


@pytest.fixture
def two_images(tmp_path, make_image):
    paths = []
    for seed, size in enumerate([(40, 30), (32, 48)]):
        path = tmp_path / f"img{seed}.png"
        make_image(*size, seed).save(path)
        paths.append(str(path))
    return paths


def test_kv_file_matches_a_direct_capture(tmp_path, two_images):
    out = tmp_path / "kv.safetensors"
    code = main(["kv", "tiny://qwen2_5_vl", "--image", two_images[0], "--image", two_images[1],
                 "--text", "Which?", "--prefix", "Look", "--layers", "0,3", "--out", str(out)])
    assert code == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["family"] == "qwen2_5_vl" and json.loads(meta["layers"]) == [0, 3]
    grids = json.loads(meta["grid_shapes"])
    expected = {"input_ids"} | {f"{n}.{l}.{i}" for n in ("values", "keys", "keys_pre_rope") for l in (0, 3)
                                 for i in (0, 1)}
    assert set(tensors) == expected
    assert tensors["input_ids"].shape[0] == 1

    from vkvtrain.images import load_image

    mlm = load_mlm("tiny://qwen2_5_vl")
    batch = mlm.encode([Prompt([load_image(p) for p in two_images], "Which?", prefix="Look")])
    assert torch.equal(batch.input_ids, tensors["input_ids"])
    assert [list(s.grid_shape) for s in batch.spans[0]] == grids
    assert json.loads(meta["image_spans"]) == [[s.start, s.stop] for s in batch.spans[0]]
    with torch.no_grad(), mlm.capture([3]) as kv:
        mlm.model(**batch.inputs)
    assert torch.equal(tensors["keys.3.1"], kv.image(3, 0, 1).grid("keys"))
    assert tensors["values.0.0"].shape == (*grids[0], mlm.kv_dim)


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--image", "{missing}"], "does not exist"),
        (["--image", "{corrupt}"], "corrupt"),
        (["--image", "{good}", "--layers", "7"], "layer 7 does not exist"),
        (["--image", "{good}", "--layers", "a,b"], "comma-separated"),
        (["--image", "{good}", "--layers", ""], "names no layer"),
        (["--image", "{good}", "--layers", "0,,3"], "empty part"),
        (["--image", "{good}", "--layr", "0"], "--layr"),
        ([], "at least one --image"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(tmp_path, two_images, capsys, args, reason):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    paths = {"missing": str(tmp_path / "nope.png"), "corrupt": str(corrupt), "good": two_images[0]}
    out = tmp_path / "out" / "kv.safetensors"
    code = main(["kv", "tiny://llava_onevision", *[a.format(**paths) for a in args], "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert reason in err and len(err.splitlines()) == 1 and err.startswith("vkvtrain kv: ")
    assert not out.exists()
    assert not list(out.parent.glob("*")) if out.parent.exists() else True


def test_unknown_family_from_the_command_line(tmp_path, two_images):
    result = subprocess.run(
        [sys.executable, "-m", "vkvtrain", "kv", "tiny://gpt2", "--image", two_images[0], "--out",
         str(tmp_path / "kv.safetensors")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "tiny://llava_onevision" in result.stderr
    assert not (tmp_path / "kv.safetensors").exists()


def test_config_file_and_overrides_give_the_same_file(tmp_path, two_images):
    """-c kv.yaml (with the positional model in it) plus dotted overrides, against the same flags on the command line."""
    config = tmp_path / "kv.yaml"
    config.write_text(f"model: tiny://llava_next\nimage: [{two_images[0]}]\nlayers: '0'\nout: {tmp_path / 'x'}\n")
    by_config = tmp_path / "by_config.safetensors"
    assert main(["kv", "-c", str(config), "layers=1,3", f"--out={by_config}", "--text", "Which?"]) == 0
    by_flags = tmp_path / "by_flags.safetensors"
    assert main(["kv", "tiny://llava_next", "--image", two_images[0], "--layers", "1,3", "--out", str(by_flags),
                 "--text", "Which?"]) == 0
    assert not (tmp_path / "x").exists()
    with safe_open(str(by_config), "pt") as a, safe_open(str(by_flags), "pt") as b:
        assert json.loads(a.metadata()["layers"]) == [1, 3] and a.metadata() == b.metadata()
        assert set(a.keys()) == set(b.keys()) and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_kv_file_gets_the_umask_mode(tmp_path, two_images, umask):
    previous = os.umask(umask)
    try:
        assert main(["kv", "tiny://llava_next", "--image", two_images[0], "--layers", "0",
                     "--out", str(tmp_path / "kv.safetensors")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "kv.safetensors").stat().st_mode) == 0o666 & ~umask
