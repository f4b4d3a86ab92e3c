"""Training-time and evaluation-time changes to an MLM, composable as a list in a recipe."""

from vkvtrain.interventions.base import (
    Intervention,
    attach_interventions,
    calibrate_interventions,
    prompt_prefix,
)
from vkvtrain.interventions.blocking import AttentionBlocking
from vkvtrain.interventions.key_artifacts import KeyArtifactSuppression
from vkvtrain.interventions.lora import LateLoRA
from vkvtrain.interventions.prefix import LearnedPrefix
from vkvtrain.models.quantization import Quantization

#: vkvtrain's own interventions by every class path a recipe or checkpoint may use for them
#: (``vkvtrain.interventions.LearnedPrefix`` and ``vkvtrain.interventions.prefix.LearnedPrefix``).
KNOWN_INTERVENTIONS: dict[str, type[Intervention]] = {
    path: cls
    for cls in (AttentionBlocking, KeyArtifactSuppression, LateLoRA, LearnedPrefix)
    for path in (f"vkvtrain.interventions.{cls.__name__}", f"{cls.__module__}.{cls.__qualname__}")
}

__all__ = [
    "KNOWN_INTERVENTIONS",
    "AttentionBlocking",
    "Intervention",
    "KeyArtifactSuppression",
    "LateLoRA",
    "LearnedPrefix",
    "Quantization",
    "attach_interventions",
    "calibrate_interventions",
    "prompt_prefix",
]
