"""``"package.module:attribute"`` names, resolved only when used (the command table, ``organism://`` models)."""

from __future__ import annotations

import importlib
from typing import Any


def resolve_entry(entry: str) -> Any:
    """The attribute named by ``"package.module:attribute"``, importing its module now."""
    module, _, attribute = entry.partition(":")
    return getattr(importlib.import_module(module), attribute)
