"""Errors vkvtrain raises on bad input. Each message names the problem and the fix."""

from __future__ import annotations


class VKVError(Exception):
    """Base class of every error vkvtrain raises on purpose."""


class UnsupportedModelError(VKVError, ValueError):
    """The checkpoint is not one of the supported MLM families."""


class ImageLoadError(VKVError, ValueError):
    """An image file is missing, unreadable or corrupt."""


class ImageSpanTruncationError(VKVError, ValueError):
    """Truncating a prompt would cut an image token span."""


class PromptError(VKVError, ValueError):
    """A prompt cannot be built as asked (wrong image count, bad placeholders...)."""


class CaptureError(VKVError, ValueError):
    """A KV capture was asked for something the model does not have (unknown layer...)."""


class DatasetError(VKVError, ValueError):
    """A dataset root, split, subtask or field is missing or malformed."""


class RecipeError(VKVError, ValueError):
    """A recipe or config is invalid (unknown key, bad value)."""


class NonFiniteLossError(VKVError, RuntimeError):
    """The training loss became NaN or infinite."""


class ModelLoadError(VKVError, OSError):
    """A model name or folder cannot be loaded (not found, hub unreachable, incomplete folder)."""


class LayerError(CaptureError, RecipeError):
    """A layer index names no LM layer of the model."""


class CheckpointError(VKVError, ValueError):
    """A checkpoint is remote, missing, unreadable, or holds more than plain tensors and containers."""


class OutputError(VKVError, OSError):
    """An output location cannot be written (checked before any expensive work, and after each save)."""
