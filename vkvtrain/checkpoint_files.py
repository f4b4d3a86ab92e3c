"""Checkpoint files on disk: local paths only, read with ``torch.load(weights_only=True)`` (so a crafted pickle
cannot run code), with one-line errors for remote, missing, truncated or foreign files.

Every checkpoint vkvtrain or Lightning reads in fit/validate/test/evaluate comes through
:func:`load_checkpoint_file` (Lightning's through ``vkvtrain.training_cli.SafeCheckpointIO``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vkvtrain.errors import CheckpointError

# Lightning's names that resolve to a local file it finds itself; "registry" downloads and is refused.
LIGHTNING_NAMES = ("last", "best", "hpc")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def _detail(message: str) -> str:
    """The informative line of a torch.load error (the restricted unpickler's reason, not its preamble)."""
    found = _UNPICKLER_ERROR.search(message)
    line = found.group(1) if found else (message.strip().splitlines() or [""])[0]
    return line.split(". ")[0][:160]


def refuse_remote(path: str | Path) -> None:
    """Refuse URLs and Lightning's model registry: a checkpoint is read from a local file only."""
    text = str(path)
    if "://" in text or text == "registry" or text.startswith("registry:"):
        raise CheckpointError(
            f"checkpoint {text!r} is remote; vkvtrain reads local files only. Download it first (e.g. `curl -LO "
            "URL`) and pass the local path: it is then read with torch.load(weights_only=True)."
        )


def local_checkpoint(path: str | Path) -> Path:
    """``path`` as an existing local file, or a one-line CheckpointError."""
    refuse_remote(path)
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {str(path)!r} {what}; pass the .ckpt written by `vkvtrain fit` "
                              "(<run folder>/checkpoints/last.ckpt) or `last` (the newest run's).")
    return file


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True``."""
    file = local_checkpoint(path)
    try:
        checkpoint = torch.load(file, map_location=map_location, weights_only=True)
    # Arbitrary bytes reach torch's restricted unpickler and zip reader, which raise many types (KeyError for a
    # text file, RuntimeError for a truncated archive, EOFError for an empty one, UnpicklingError for a
    # forbidden global): every one means "not a checkpoint vkvtrain will read".
    except Exception as error:  # noqa: BLE001
        found = _UNSUPPORTED_GLOBAL.search(str(error))
        if found:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a Python object ({found.group(1)}) beyond tensors and plain "
                "containers; vkvtrain loads checkpoints with weights_only=True and refuses it. Use a checkpoint "
                "written by `vkvtrain fit`."
            ) from None
        detail = _detail(str(error)) or type(error).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable PyTorch checkpoint (truncated, or another kind of file: "
            f"{type(error).__name__}: {detail}); pass a .ckpt written by `vkvtrain fit`."
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint dict; "
                              "pass a .ckpt written by `vkvtrain fit`.")
    return checkpoint
