"""A checkpoint's intervention class paths never import code: every path a checkpoint reaches vkvtrain by
(restore_into, evaluate --ckpt_path, a resume's model lookup) refuses a class that is not vkvtrain's own,
before anything is imported; a module planted next to the checkpoint never runs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vkvtrain import load_mlm
from vkvtrain.checkpointing import (
    CHECKPOINT_KEY,
    build_intervention,
    checkpoint_entry,
    restore_into,
)
from vkvtrain.errors import RecipeError
from vkvtrain.cli import main as cli_main
from vkvtrain.interventions import KNOWN_INTERVENTIONS, LearnedPrefix

PAYLOAD = '''
import pathlib
pathlib.Path(__file__).with_name("MARKER").write_text("imported")

from vkvtrain.interventions import Intervention


class Evil(Intervention):
    pass
'''


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A checkpoint naming ``evil_mod.Evil``, with ``evil_mod.py`` beside it in the current folder."""
    (tmp_path / "evil_mod.py").write_text(PAYLOAD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the current folder importable, as with `python -m` from there
    prefix = LearnedPrefix(num_tokens=2)
    prefix.attach(load_mlm("tiny://llava_onevision"))
    entry = checkpoint_entry("", "tiny://llava_onevision", [prefix])
    entry[CHECKPOINT_KEY]["interventions"].append({"class_path": "evil_mod.Evil", "init_args": {}})
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"interventions.0.vectors": prefix.vectors.detach()}, **entry}, ckpt)
    yield ckpt
    sys.modules.pop("evil_mod", None)


def test_restore_refuses_unknown_class_without_importing_it(planted: Path) -> None:
    with pytest.raises(RecipeError, match="'evil_mod.Evil' is not one of vkvtrain's.*it is not imported"):
        restore_into(load_mlm("tiny://llava_onevision"), planted)
    assert not (planted.parent / "MARKER").exists()
    assert "evil_mod" not in sys.modules


def test_evaluate_ckpt_path_refuses_it_in_one_line(planted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["evaluate", "--ckpt_path", str(planted), "--data.source", "synthetic", "--data.synthetic_n",
                     "1", "--data.subtasks", "[Counting]", "--output_dir", str(planted.parent / "out"),
                     "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vkvtrain evaluate: ") and "is not one of vkvtrain's" in err
    assert not (planted.parent / "MARKER").exists()


def test_trusted_by_name_is_imported_and_known_classes_need_no_trust(planted: Path) -> None:
    """A class the user names explicitly (their own config) is imported; vkvtrain's own never need trust."""
    evil = build_intervention({"class_path": "evil_mod.Evil", "init_args": {}}, trusted=["evil_mod.Evil"])
    assert type(evil).__name__ == "Evil" and (planted.parent / "MARKER").exists()
    for path in KNOWN_INTERVENTIONS:
        assert path.startswith("vkvtrain.interventions.")
    with pytest.raises(RecipeError, match="not a vkvtrain Intervention"):
        build_intervention({"class_path": "pathlib.Path"}, trusted=["pathlib.Path"])
