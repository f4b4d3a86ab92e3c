"""Tiny, deterministic, randomly initialised checkpoints of the real MLM classes, built offline.

`tiny://<family>` (e.g. `tiny://llava_onevision`, `tiny://qwen2_5_vl`, `tiny://llava_next`) names a real
transformers model of that family's class with a byte-level tokenizer, the family's image processor and a chat
template in the family's format, all built here without any download (each adapter's `build_tiny`) and saved
with `save_pretrained` into a cache folder. Building is seeded: the same
library versions give byte-identical weights. The size "mid" (~30M parameters) gives benchmark-sized models of
the same classes; "tiny" (~0.3M) is what tests, CI and the demo use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import transformers

from vkvtrain.errors import UnsupportedModelError
from vkvtrain.models.registry import adapter_for_family, families
from vkvtrain.models.tiny_parts import SIZES
from vkvtrain.outputs import apply_default_modes, staging_dir

TINY_SCHEME = "tiny://"
SEED = 0
BUILD_VERSION = 1  # bump when a family's tiny recipe changes, so caches rebuild


def build_tiny(family: str, out_dir: str | Path, size: str = "tiny") -> Path:
    """Build a seeded random checkpoint of `family` at `size` and save it as a standard HF folder.

    The family's adapter decides the architecture (`FamilyAdapter.build_tiny`). Returns the folder, loadable
    with `load_mlm(folder)` or the family's transformers classes.
    """
    if size not in SIZES:
        raise UnsupportedModelError(f"unknown tiny size {size!r}; choose one of {', '.join(SIZES)}.")
    if family not in families():
        raise UnsupportedModelError(f"no tiny checkpoint for family {family!r}; choose one of {', '.join(families())}.")
    torch.manual_seed(SEED)
    model, processor = adapter_for_family(family).build_tiny(size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return apply_default_modes(out_dir)  # save_pretrained writes model.safetensors 0600


def tiny_cache_dir() -> Path:
    """Where built tiny checkpoints are kept (VKVTRAIN_CACHE or ~/.cache/vkvtrain)."""
    root = os.environ.get("VKVTRAIN_CACHE") or Path.home() / ".cache" / "vkvtrain"
    return Path(root) / "tiny"


def _cache_key(family: str, size: str) -> str:
    versions = f"{family}-{size}-{BUILD_VERSION}-{transformers.__version__}-{torch.__version__}"
    return f"{family}-{size}-{hashlib.sha1(versions.encode()).hexdigest()[:10]}"


def ensure_tiny(family: str, size: str = "tiny") -> Path:
    """The cached folder of a tiny checkpoint, built on first use (atomically, so concurrent users are safe)."""
    target = tiny_cache_dir() / _cache_key(family, size)
    if (target / "vkvtrain_tiny.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, prefix=f".{family}-")  # the usual folder mode, not mkdtemp's 0700
    try:
        build_tiny(family, staging, size=size)
        (staging / "vkvtrain_tiny.json").write_text(json.dumps({"family": family, "size": size, "seed": SEED}))
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its folder is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def parse_tiny(name: str) -> tuple[str, str]:
    """`tiny://family[@size]` -> (family, size)."""
    spec = name[len(TINY_SCHEME):]
    family, _, size = spec.partition("@")
    return family, size or "tiny"
