"""Training-time and evaluation-time changes to an MLM, composable as a list in a recipe."""

from vkvtrain.interventions.base import Intervention
from vkvtrain.interventions.blocking import AttentionBlocking
from vkvtrain.interventions.key_artifacts import KeyArtifactSuppression
from vkvtrain.interventions.lora import LateLoRA
from vkvtrain.interventions.prefix import LearnedPrefix
from vkvtrain.models.quantization import Quantization

__all__ = [
    "AttentionBlocking",
    "Intervention",
    "KeyArtifactSuppression",
    "LateLoRA",
    "LearnedPrefix",
    "Quantization",
]
