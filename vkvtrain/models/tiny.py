"""Tiny, deterministic, randomly initialised checkpoints of the real MLM classes, built offline.

`tiny://<family>` (e.g. `tiny://llava_onevision`, `tiny://qwen2_5_vl`, `tiny://llava_next`) names a real
transformers model of that family's class with a byte-level tokenizer, the family's image processor and a chat
template in the family's format, all built here without any download (each adapter's `build_tiny`) and saved
with `save_pretrained` into a cache folder. Building is seeded: the same
library versions give byte-identical weights. The size "mid" (~30M parameters) gives benchmark-sized models of
the same classes; "tiny" (~0.3M) is what tests, CI and the demo use.

`tiny://<family>@<published size>` (e.g. `tiny://llava_onevision@0.5b`, `tiny://qwen2_5_vl@7b`; each adapter's
``published_sizes``) is the published checkpoint's architecture: its widths, layer counts, vision geometry,
processor settings and vocabulary size, with random weights and the byte-level tokenizer (special tokens at their
published ids). A published size of at most ``MATERIALIZE_MAX_PARAMETERS`` parameters is built with seeded
random weights; a larger one is saved as config + processor only, and `load_mlm` builds it on the meta device
(every shape, module name and layer resolves; nothing can run).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import transformers

from vkvtrain.errors import UnsupportedModelError
from vkvtrain.models.registry import adapter_for_family, families
from vkvtrain.models.tiny_parts import SIZES
from vkvtrain.outputs import apply_default_modes, build_in_place

TINY_SCHEME = "tiny://"
SEED = 0
BUILD_VERSION = 1  # bump when a family's tiny recipe changes, so caches rebuild
#: published sizes up to this many parameters get random weights (LLaVA-OneVision-0.5B: 0.89e9, 3.6 GB in
#: float32); larger ones stay config-only and load on the meta device.
MATERIALIZE_MAX_PARAMETERS = 2_000_000_000
#: the file that marks a folder written by `build_tiny` (family, size, seed, whether it holds weights)
MARKER = "vkvtrain_tiny.json"


def build_tiny(family: str, out_dir: str | Path, size: str = "tiny", config_only: bool = False) -> Path:
    """Build a seeded random checkpoint of `family` at `size` and save it as a standard HF folder.

    The family's adapter decides the architecture (`FamilyAdapter.build_tiny` for "tiny"/"mid",
    `FamilyAdapter.build_published` for its published sizes). Returns the folder, loadable with
    `load_mlm(folder)`; a config-only folder (a published size above ``MATERIALIZE_MAX_PARAMETERS``, or any
    published size with ``config_only``) loads on the meta device.
    """
    if family not in families():
        raise UnsupportedModelError(f"no tiny checkpoint for family {family!r}; choose one of {', '.join(families())}.")
    adapter = adapter_for_family(family)
    if size not in adapter.sizes():
        raise UnsupportedModelError(f"unknown size {size!r} for {family}; choose one of {', '.join(adapter.sizes())}.")
    torch.manual_seed(SEED)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if size in SIZES:
        if config_only:
            raise UnsupportedModelError(f"config_only applies to published sizes, not {size!r}.")
        model, processor = adapter.build_tiny(size)
        model.save_pretrained(out_dir, safe_serialization=True)
        weights, n_parameters = True, model.num_parameters()
    else:
        config, processor = adapter.build_published(size)
        model_class = getattr(transformers, adapter.model_class_name)
        with torch.device("meta"):  # counting costs no memory
            n_parameters = model_class._from_config(config).num_parameters()
        weights = n_parameters <= MATERIALIZE_MAX_PARAMETERS and not config_only
        if weights:
            model_class._from_config(config).save_pretrained(out_dir, safe_serialization=True)
        else:
            config.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    marker = {"family": family, "size": size, "seed": SEED, "weights": weights, "parameters": n_parameters}
    (out_dir / MARKER).write_text(json.dumps(marker))
    return apply_default_modes(out_dir)  # save_pretrained writes model.safetensors 0600


def has_weights(folder: str | Path) -> bool:
    """False for a config-only folder written by `build_tiny` (a published size too large to hold here)."""
    marker = Path(folder) / MARKER
    return not marker.is_file() or bool(json.loads(marker.read_text()).get("weights", True))


def tiny_cache_dir() -> Path:
    """Where built tiny checkpoints are kept (VKVTRAIN_CACHE or ~/.cache/vkvtrain)."""
    root = os.environ.get("VKVTRAIN_CACHE") or Path.home() / ".cache" / "vkvtrain"
    return Path(root) / "tiny"


def _cache_key(family: str, size: str, config_only: bool) -> str:
    name = f"{family}-{size}" + ("-config" if config_only else "")
    versions = f"{name}-{BUILD_VERSION}-{transformers.__version__}-{torch.__version__}"
    return f"{name}-{hashlib.sha1(versions.encode()).hexdigest()[:10]}"


def ensure_tiny(family: str, size: str = "tiny", config_only: bool = False) -> Path:
    """The cached folder of a tiny checkpoint, built on first use (atomically, so concurrent users are safe);
    ``config_only`` keeps a published size config-only whatever its size (shape checks, memory plans)."""
    target = tiny_cache_dir() / _cache_key(family, size, config_only)
    if (target / MARKER).exists():
        return target
    return build_in_place(target, MARKER, lambda staging: build_tiny(family, staging, size, config_only),
                          prefix=f".{family}-")


def parse_tiny(name: str) -> tuple[str, str]:
    """`tiny://family[@size]` -> (family, size)."""
    spec = name[len(TINY_SCHEME):]
    family, _, size = spec.partition("@")
    return family, size or "tiny"
