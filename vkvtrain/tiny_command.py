"""``python -m vkvtrain tiny FAMILY --out DIR [--size tiny|mid]``: a seeded tiny random checkpoint of one
supported family, written as a standard HF folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from vkvtrain.errors import OutputError, UnsupportedModelError
from vkvtrain.models.registry import families
from vkvtrain.models.tiny import MARKER, build_tiny
from vkvtrain.outcome import Outcome, follow_up
from vkvtrain.outputs import build_in_place, check_writable_dir, make_dirs


def tiny(family: str, out: str | None = None, size: Literal["tiny", "mid"] = "tiny") -> Outcome:
    """Write a seeded tiny random checkpoint of a supported family as a standard HF folder.

    Args:
        family: the model family: {families}.
        out: the folder to write (new or empty; loadable with load_mlm(folder)).
        size: tiny (~0.3M parameters: tests, CI, the demo) or mid (~30M: benchmarks).
    """
    if family not in families():
        raise UnsupportedModelError(f"unknown family {family!r}; choose one of {', '.join(families())}.")
    if out is None:
        raise OutputError("tiny needs --out DIR (the folder to write).")
    target = check_writable_dir(out, "--out")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"--out {str(target)!r} already exists and is not an empty folder; choose a new folder.")
    make_dirs(target.parent, "the folder of --out")
    # renaming onto the empty folder checked above replaces it
    build_in_place(target, MARKER, lambda staging: build_tiny(family, staging, size=size), prefix=f".{target.name}-")
    files = sorted(p.name for p in Path(target).iterdir())
    return Outcome(
        title=f"tiny {family} ({size})",
        outputs={"checkpoint folder": str(target)},
        figures={"files": ", ".join(files)},
        next=[("read its image keys/values", follow_up("kv", str(target), "--image", "IMAGE.png", "--out", "kv.safetensors"))],
    )


tiny.__doc__ = (tiny.__doc__ or "").replace("{families}", ", ".join(families()))
