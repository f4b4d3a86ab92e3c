"""bitsandbytes quantized loading (QLoRA recipes): a typed recipe section turned into a BitsAndBytesConfig.

Only the language model is quantized: the vision tower and the projector are skipped by full module name
(4-bit kernels reject Linear layers narrower than 64 inputs, and quantizing the encoder changes the visual
features being studied). 4-bit is meant for GPUs; 8-bit also loads, runs and trains LoRA on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vkvtrain.errors import RecipeError

DEFAULT_SKIP = ["model.vision_tower", "model.visual", "model.multi_modal_projector", "lm_head"]


@dataclass
class Quantization:
    """Recipe section ``model.quantization``.

    Attributes:
        bits: 4 (nf4/fp4, GPU) or 8 (LLM.int8, CPU too).
        quant_type: 4-bit data type, "nf4" or "fp4".
        compute_dtype: dtype of 4-bit matmuls ("bfloat16", "float16", "float32").
        double_quant: nested quantization of the 4-bit scales.
        skip_modules: full module names left unquantized (prefix match), by default the vision side and head.
    """

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = True
    skip_modules: list[str] = field(default_factory=lambda: list(DEFAULT_SKIP))

    def to_bnb_config(self) -> Any:
        """The ``transformers.BitsAndBytesConfig`` that ``load_mlm(..., quantization=...)`` takes."""
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise RecipeError(
                "model.quantization needs bitsandbytes: pip install 'vkvtrain[quant]' (or drop the section)."
            ) from err
        from transformers import BitsAndBytesConfig

        if self.bits not in (4, 8):
            raise RecipeError(f"model.quantization.bits must be 4 or 8, got {self.bits}.")
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(self.skip_modules))
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_use_double_quant=self.double_quant,
            llm_int8_skip_modules=list(self.skip_modules),
        )


def is_quantized(model: torch.nn.Module) -> bool:
    """True when bitsandbytes layers are present (the model was loaded with a quantization config)."""
    return bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
                or getattr(model, "quantization_method", None) == "bitsandbytes"
                or getattr(model, "hf_quantizer", None) is not None)
