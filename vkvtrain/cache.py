"""Where vkvtrain keeps what it builds or derives once: ``$VKVTRAIN_CACHE`` or ``~/.cache/vkvtrain``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The vkvtrain cache folder (``VKVTRAIN_CACHE`` overrides ``~/.cache/vkvtrain``); not created here."""
    return Path(os.environ.get("VKVTRAIN_CACHE") or Path.home() / ".cache" / "vkvtrain")
