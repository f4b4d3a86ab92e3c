"""The supported MLM families. Adding a family = one adapter file + one `register(...)` line here."""

from __future__ import annotations

from vkvtrain.errors import UnsupportedModelError
from vkvtrain.models.base import FamilyAdapter
from vkvtrain.models.llava_next import LlavaNextAdapter
from vkvtrain.models.llava_onevision import LlavaOnevisionAdapter
from vkvtrain.models.qwen2_5_vl import Qwen2_5_VLAdapter

#: adapter class per `config.model_type`, in registration order
ADAPTERS: dict[str, type[FamilyAdapter]] = {}


def register(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Make a family known to `load_mlm`, `tiny://` and every command (usable as a class decorator)."""
    ADAPTERS[adapter.model_type] = adapter
    return adapter


register(LlavaOnevisionAdapter)
register(Qwen2_5_VLAdapter)
register(LlavaNextAdapter)


def families() -> tuple[str, ...]:
    """Short names of the registered families (as in `tiny://<family>`)."""
    return tuple(adapter.family for adapter in ADAPTERS.values())


def sizes() -> tuple[str, ...]:
    """Every size some registered family accepts in `tiny://<family>@<size>` (test sizes first)."""
    return tuple(dict.fromkeys(size for adapter in ADAPTERS.values() for size in adapter.sizes()))


def adapter_for(model_type: str, source: str = "") -> FamilyAdapter:
    """The adapter for a config's `model_type`, or an error listing the supported families."""
    try:
        return ADAPTERS[model_type]()
    except KeyError:
        where = f" ({source})" if source else ""
        supported = ", ".join(f"{a.model_type} ({a.model_class_name})" for a in ADAPTERS.values())
        raise UnsupportedModelError(
            f"model_type {model_type!r}{where} is not a supported MLM family. Supported: {supported}. "
            "Point vkvtrain at a checkpoint of one of these, or add an adapter in vkvtrain/models/."
        ) from None


def adapter_for_family(family: str) -> FamilyAdapter:
    """The adapter for a family short name (as in `tiny://<family>`)."""
    for adapter in ADAPTERS.values():
        if adapter.family == family:
            return adapter()
    raise UnsupportedModelError(f"unknown MLM family {family!r}; supported families: {', '.join(families())}.")
