"""`LoadedMLM`: a transformers MLM, its processor and its family adapter, with the shapes everything asks for.

It sits low in the package so that prompts and capture can name it in their signatures; `vkvtrain.mlm.MLM`
adds the `encode` / `capture` conveniences on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from vkvtrain.models.base import FamilyAdapter


@dataclass
class LoadedMLM:
    """A loaded multimodal LM: the transformers model, its processor and its family adapter.

    ``model`` keeps its transformers class under LoRA (peft injects its layers in place); everything here
    resolves layers through the adapter at call time.
    """

    model: PreTrainedModel
    processor: ProcessorMixin
    adapter: FamilyAdapter
    name: str

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer: PreTrainedTokenizerBase = getattr(self.processor, "tokenizer")
        return tokenizer

    @property
    def text_config(self) -> PretrainedConfig:
        return self.adapter.text_config(self.model)

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def num_kv_heads(self) -> int:
        return int(self.text_config.num_key_value_heads)

    @property
    def head_dim(self) -> int:
        config: Any = self.text_config
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def image_token_id(self) -> int:
        return self.adapter.image_token_id(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> None:
        """Move the model to ``device`` (in place)."""
        nn.Module.to(self.model, torch.device(device))  # PreTrainedModel.to's decorated signature confuses checkers

    def decoder_layers(self) -> nn.ModuleList:
        return self.adapter.decoder_layers(self.model)
