"""bitsandbytes quantized loading (QLoRA recipes): a typed recipe section turned into a BitsAndBytesConfig.

Only the language model is quantized: the vision tower and the projector (the family adapter's
``vision_modules``) and the LM head are skipped by full module name (4-bit kernels reject Linear layers narrower
than 64 inputs, and quantizing the encoder changes the visual features being studied). 4-bit is meant for
GPUs; 8-bit also loads, runs and trains LoRA on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.quantizers.quantizers_utils import should_convert_module

from vkvtrain.errors import RecipeError


@dataclass
class Quantization:
    """Recipe section ``model.quantization``.

    Attributes:
        bits: 4 (nf4/fp4, GPU) or 8 (LLM.int8, CPU too).
        quant_type: 4-bit data type, "nf4" or "fp4".
        compute_dtype: dtype of 4-bit matmuls ("bfloat16", "float16", "float32").
        double_quant: nested quantization of the 4-bit scales.
        skip_modules: full module names left unquantized (prefix match); None = the family's vision tower and
            projector plus ``lm_head``.
    """

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = True
    skip_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise RecipeError(f"model.quantization.bits must be 4 or 8, got {self.bits}.")

    def skip_list(self, vision_modules: Sequence[str]) -> list[str]:
        """The module names left unquantized: ``skip_modules``, or the vision side plus ``lm_head``."""
        return list(self.skip_modules) if self.skip_modules is not None else [*vision_modules, "lm_head"]

    def to_bnb_config(self, vision_modules: Sequence[str]) -> BitsAndBytesConfig:
        """The ``BitsAndBytesConfig`` for a model whose vision side lives at ``vision_modules``."""
        try:
            import bitsandbytes  # noqa: F401  (optional dependency: checked only when quantization is asked for)
        except ImportError as err:
            raise RecipeError(
                "model.quantization needs bitsandbytes: pip install 'vkvtrain[quant]' (or drop the section)."
            ) from err
        skip = self.skip_list(vision_modules)
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_use_double_quant=self.double_quant,
            llm_int8_skip_modules=skip,
        )



def unmatched_skip_modules(model: nn.Module, skip_modules: Sequence[str]) -> list[str]:
    """The entries of ``skip_modules`` that match no module of ``model`` under transformers' own matching rule
    (a prefix up to a module boundary, a regex, or a suffix): a misspelt entry would leave that part quantized."""
    names = [name for name, _ in model.named_modules() if name]
    return [pattern for pattern in skip_modules
            if all(should_convert_module(name, [pattern]) for name in names)]
