"""The memory plan against what CPU can measure: parameter bytes of real (also quantized) models, the bytes
autograd saves for backward, and the profiler's peak of a forward + backward.

Stated tolerance: the saved-activation term is within 6% of the exact saved bytes, and the planned peak is never
below the measured one and at most 35% above it (LoRA inputs that float32 shares between projections, and the
embedding/logit extras, make it err on the safe side)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from vkvtrain.interventions import LateLoRA, LearnedPrefix
from vkvtrain.memory_plan import (
    ANSWER_TOKENS,
    LMShape,
    layer_activation_bytes,
    peak_allocated_bytes,
    plan_training,
    saved_activation_bytes,
    training_shape,
    weight_bytes,
)
from vkvtrain.models.quantization import Quantization

FAMILY_LMS = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "llava_next"])
def test_weight_bytes_equal_the_loaded_models_parameters(tiny_mlm, family: str, dtype: str) -> None:
    mlm = tiny_mlm(family, dtype=dtype)
    mlm.model.requires_grad_(False)
    loaded = sum(p.numel() * p.element_size() for p in {id(p): p for p in mlm.model.parameters()}.values())
    assert weight_bytes(mlm.model, dtype) == loaded
    with torch.device("meta"):  # the plan reads a meta skeleton: same count
        skeleton = type(mlm.model)._from_config(mlm.model.config)
    skeleton.requires_grad_(False)
    assert weight_bytes(skeleton, dtype) == loaded


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_weight_bytes_equal_bitsandbytes_storage(tiny_mlm, bits: int) -> None:
    """Oracle: the bytes bitsandbytes actually stores (packed weights, absmax and nested absmax, int8 + row
    scales), read from the quantized model of the bias-free LLaVA-NeXT LM (CPU kernels suffice)."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (vkvtrain[quant])")
    quantization = Quantization(bits=bits, compute_dtype="float32")
    mlm = tiny_mlm("llava_next", quantization=quantization)
    stored = 0
    for module in mlm.model.modules():
        for name, param in module.named_parameters(recurse=False):
            stored += param.numel() * param.element_size()
            if isinstance(module, bnb.nn.Linear4bit) and name == "weight":
                state = param.quant_state
                stored += state.absmax.numel() * state.absmax.element_size()
                if state.nested:
                    stored += state.state2.absmax.numel() * state.state2.absmax.element_size()
            if isinstance(module, bnb.nn.Linear8bitLt) and name == "weight":
                stored += param.SCB.numel() * param.SCB.element_size()
    with torch.device("meta"):
        skeleton = type(mlm.model)._from_config(mlm.model.config)
    skeleton.requires_grad_(False)
    planned = weight_bytes(skeleton, None, quantization, quantization.skip_list(mlm.adapter.vision_modules))
    assert planned == pytest.approx(stored, rel=0.02)


def _lm(family: str, dtype: torch.dtype, checkpointing: bool, mode: str):  # type: ignore[no-untyped-def]
    config_class, model_class = FAMILY_LMS[family]
    config = config_class(hidden_size=256, intermediate_size=704, num_hidden_layers=3, num_attention_heads=8,
                          num_key_value_heads=2, vocab_size=2000)
    torch.manual_seed(0)
    model = model_class(config).to(dtype)
    model.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    interventions: list = []
    model.disable_input_require_grads()  # as VKVModule: non-reentrant checkpoints need no input grads
    if mode == "prefix":  # the prefix vectors make the input embeddings require grad
        model.enable_input_require_grads()
        interventions = [LearnedPrefix(num_tokens=4)]
    else:  # LoRA with dropout on the last two layers, as the recipes
        interventions = [LateLoRA(layers=[-2, -1], rank=16, dropout=0.05)]
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=r".*layers\.(1|2)\.self_attn\.(q|k|v|o)_proj"))
    model.train()
    return config, model, interventions


@pytest.mark.parametrize("family,dtype,checkpointing,mode", [
    ("qwen2", torch.bfloat16, False, "prefix"),
    ("llama", torch.bfloat16, True, "prefix"),
    ("qwen2", torch.bfloat16, False, "lora"),
    ("llama", torch.float32, True, "lora"),
])
def test_activation_plan_against_cpu_measurement(family: str, dtype: torch.dtype, checkpointing: bool,
                                                 mode: str) -> None:
    torch.set_num_threads(1)
    batch, length = 2, 256
    config, model, interventions = _lm(family, dtype, checkpointing, mode)
    ids = torch.randint(0, 2000, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :29] = 0  # left padding: the padding mask reaches sdpa, as in every training batch

    def forward() -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=ANSWER_TOKENS, use_cache=False).logits

    def step() -> None:
        forward().float().sum().backward()

    step()  # warm-up (lazy inits), then measure
    for param in model.parameters():
        param.grad = None
    peak = peak_allocated_bytes(step)
    for param in model.parameters():
        param.grad = None
    saved = saved_activation_bytes(forward, exclude=list(model.parameters()))

    shape = LMShape.from_config(config)
    b = torch.finfo(dtype).bits // 8
    training = training_shape(interventions, shape, batch, length, b, checkpointing)
    plan = plan_training(shape, 0, training, mask_bytes=4, embedding_copies=1)  # CPU dropout: float32 masks
    adapter_grads = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)  # no optimiser in `step`
    planned_peak = plan.activations + plan.extras + adapter_grads
    if mode == "prefix":  # no LoRA inputs to share: the saved term is exact up to small tensors
        assert plan.parts["saved"] == pytest.approx(saved, rel=0.06)
    assert peak <= planned_peak <= 1.35 * peak, (peak, planned_peak)


def test_layer_activations_scale_as_the_formula_says() -> None:
    shape = LMShape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128, vocab=152064)
    one = layer_activation_bytes(shape, 1, 1000, 2)
    assert layer_activation_bytes(shape, 4, 1000, 2) == 4 * one  # linear in the batch
    # linear in L but for the (B, 1, L, L) padding mask sdpa keeps per layer
    assert layer_activation_bytes(shape, 1, 2000, 2) - 2 * one == 2 * (2000**2 - 2 * 1000**2)
