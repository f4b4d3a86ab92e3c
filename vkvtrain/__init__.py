"""vkvtrain: read, probe and change what a multimodal LM's language model does with the image."""

from vkvtrain.mlm import MLM
from vkvtrain.models.loading import load_mlm
from vkvtrain.prompts import EncodedBatch, ImageSpan, Prompt

__all__ = ["MLM", "EncodedBatch", "ImageSpan", "Prompt", "load_mlm"]
__version__ = "0.1.0"
