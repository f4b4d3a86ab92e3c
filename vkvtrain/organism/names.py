"""The ``organism://<family>[@size]`` model name (light: ``load_mlm`` imports it at start-up)."""

from __future__ import annotations

ORGANISM_SCHEME = "organism://"
ORGANISM_FAMILIES: tuple[str, ...] = ("llava_onevision", "llava_next")
ORGANISM_SIZES: tuple[str, ...] = ("full", "tiny")
#: what ``load_mlm`` calls for an ``organism://`` name: the cached build (trained on first use)
ORGANISM_RESOLVER = "vkvtrain.organism.build:resolve_name"


def parse_organism(name: str) -> tuple[str, str]:
    """``organism://family[@size]`` -> ``(family, size)``; the size defaults to ``full``."""
    family, _, size = name[len(ORGANISM_SCHEME):].partition("@")
    return family, size or "full"
