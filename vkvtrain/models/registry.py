"""The supported MLM families. Adding a family = one adapter file + one line here."""

from __future__ import annotations

from vkvtrain.errors import UnsupportedModelError
from vkvtrain.models.base import FamilyAdapter
from vkvtrain.models.llava_next import LlavaNextAdapter
from vkvtrain.models.llava_onevision import LlavaOnevisionAdapter
from vkvtrain.models.qwen2_5_vl import Qwen2_5_VLAdapter

ADAPTERS: dict[str, type[FamilyAdapter]] = {
    LlavaOnevisionAdapter.model_type: LlavaOnevisionAdapter,
    Qwen2_5_VLAdapter.model_type: Qwen2_5_VLAdapter,
    LlavaNextAdapter.model_type: LlavaNextAdapter,
}

FAMILIES: tuple[str, ...] = tuple(adapter.family for adapter in ADAPTERS.values())


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
    raise UnsupportedModelError(f"unknown MLM family {family!r}; supported families: {', '.join(FAMILIES)}.")
