"""Planned peak accelerator memory of one training step, from the architecture alone (no GPU, no weights).

    peak = weights + trainable state + activations + extras          (bytes; B rows, L = longest prompt)

weights: every parameter at the load dtype's bytes (`weight_bytes`, counted on a meta-device model). Under
    bitsandbytes 4-bit, every ``nn.Linear`` outside the skip modules holds 0.5 byte per weight plus its absmax
    (one 8-bit value per 64-weight block and one float32 per 256 blocks with double quantization, one float32
    per block without); its bias and everything else stay in the compute dtype. 4-bit matmuls keep no input
    for backward (bitsandbytes' MatMul4Bit), so activations are those of the compute dtype.
trainable state: 16 bytes per trained value (float32 value, gradient and AdamW's two moments).
activations (`layer_activation_bytes`), per LM decoder layer autograd records, with b the compute dtype's bytes,
    H the hidden width, I the MLP width, n_h heads of head_dim d (D = n_h d):

        A = B L (2*4H + 4Db + 3Ib + 4 n_h + 8) + B L^2 b + LoRA

    i.e. the two RMSNorms' float32 copies of their inputs (+ their rsqrt), q and the head-repeated k and v and
    the attention output (sdpa's backward keeps them, with a float32 logsumexp per head), the SiLU input and
    output and the up projection, and the additive padding mask (B, 1, L, L) that sdpa converts from the
    boolean one and keeps per layer. Frozen linear layers keep nothing (their weight gradient is not needed).
    LoRA adds per adapted projection of input width d_in and rank r: B L (4 d_in + 4r) (peft runs adapters
    in float32: the float32 input of lora_A, after dropout, and the rank-r middle), and with dropout its mask
    (1 byte per value from CUDA's fused dropout; CPU's dropout keeps a float32 mask: ``mask_bytes``).
    Autograd records the layers from the first one with a trainable tensor upstream (a prefix: every layer;
    LoRA alone: from its first adapted layer). Without gradient checkpointing each keeps A, the final norm
    keeps B L 4H, and the backward's working set adds K_SAVED x A. With (non-reentrant) gradient
    checkpointing each keeps only its input, B L H b (+ the final norm's B L 4H), and one layer is recomputed
    at a time: (1 + K_RECOMPUTE) x A on top.
extras: the input embeddings (``embedding_copies`` x B L H b: lookup, image scatter, prefix scatter), the
    answer-window logits (B K V (b + 4 + 4): output, float32 copy, its gradient), the boolean mask (B L^2), the
    keys a loss reads with gradients (B L n_kv d b per such layer, an upper bound: only image positions are kept).

K_SAVED and K_RECOMPUTE are the only fitted numbers: the backward's transient working set, measured on CPU with
torch's own profiler on real-architecture decoder layers (`peak_allocated_bytes`; tests/test_memory_plan.py
checks the formula against the measurement). A GPU adds what no formula here sees: the CUDA context and kernel
workspaces (~0.5-1 GB) and the caching allocator's fragmentation; `MemoryPlan.fits` keeps HEADROOM of the card
free for them. The vision tower runs without gradients (frozen, no trainable input): its transient activations
come before the LM's and are far smaller, so they do not add to the peak.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers.quantizers.quantizers_utils import should_convert_module

from vkvtrain.interventions import Intervention, KeyArtifactSuppression, LateLoRA, LearnedPrefix
from vkvtrain.layers import resolve_layers
from vkvtrain.models.quantization import Quantization

GiB = 1024**3
#: backward working set without gradient checkpointing, in units of one layer's saved activations A
#: (measured 0.26-0.38 on CPU, float32 and bfloat16, prefix and LoRA)
K_SAVED = 0.4
#: the recomputed layer's backward working set with gradient checkpointing, in units of A (measured 0.08-0.17)
K_RECOMPUTE = 0.2
#: fraction of a card's memory a plan may use (the rest: CUDA context, workspaces, fragmentation)
HEADROOM = 0.10
#: answer tokens whose logits a training step computes (the window `answer_forward` keeps)
ANSWER_TOKENS = 8
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


@dataclass(frozen=True)
class LMShape:
    """The widths of an LM decoder that set its activation memory."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, text_config: Any) -> LMShape:
        """From a transformers text config (``config.get_text_config()``)."""
        heads = int(text_config.num_attention_heads)
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
        return cls(hidden=int(text_config.hidden_size), intermediate=int(text_config.intermediate_size),
                   layers=int(text_config.num_hidden_layers), heads=heads,
                   kv_heads=int(text_config.num_key_value_heads), head_dim=int(head_dim),
                   vocab=int(text_config.vocab_size))


@dataclass(frozen=True)
class Adapted:
    """One LoRA-adapted projection: its layer and input/output widths."""

    layer: int
    d_in: int
    d_out: int


@dataclass(frozen=True)
class TrainingShape:
    """What a training step trains and on what batch.

    Attributes:
        batch: rows per step (per device). seq_len: tokens of the longest row (rows are left-padded to it).
        compute_bytes: bytes of the compute dtype (2 for bf16, also under 4-bit; 4 for float32).
        gradient_checkpointing: whether every decoder layer is checkpointed (and its input made to need grad).
        first_recorded_layer: the first layer with a trainable tensor upstream (None: none in the LM path).
        lora: the adapted projections; lora_rank, lora_dropout their rank and dropout.
        trainable_values: how many values the optimiser trains.
        grad_capture_layers: layers whose keys a loss reads with gradients.
    """

    batch: int
    seq_len: int
    compute_bytes: int
    gradient_checkpointing: bool
    first_recorded_layer: int | None
    lora: tuple[Adapted, ...] = ()
    lora_rank: int = 0
    lora_dropout: float = 0.0
    trainable_values: int = 0
    grad_capture_layers: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """A planned peak, by part (bytes)."""

    weights: int
    trainable_state: int
    activations: int
    extras: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.trainable_state + self.activations + self.extras

    def fits(self, card_bytes: float) -> bool:
        """Whether the plan leaves ``HEADROOM`` of a card with ``card_bytes`` free."""
        return self.total <= (1 - HEADROOM) * card_bytes


def lora_bytes_per_token(adapted: Sequence[Adapted], rank: int, dropout: float, mask_bytes: int = 1) -> int:
    """Saved bytes per token of the LoRA adapters in ``adapted`` (float32 adapters, see the module docstring);
    ``mask_bytes``: bytes per dropout-mask value (1 on CUDA, 4 on CPU)."""
    per_input = 4 + (mask_bytes if dropout > 0 else 0)
    return sum(per_input * a.d_in + 4 * rank for a in adapted)


def layer_activation_bytes(shape: LMShape, batch: int, seq_len: int, compute_bytes: int,
                           lora_per_token: int = 0) -> int:
    """A: what one recorded decoder layer keeps for backward (see the module docstring)."""
    b, h = compute_bytes, shape.hidden
    per_token = 2 * 4 * h + 4 * shape.heads * shape.head_dim * b + 3 * shape.intermediate * b + 4 * shape.heads + 8
    return batch * seq_len * (per_token + lora_per_token) + batch * seq_len * seq_len * b


def plan_training(shape: LMShape, weights: int, training: TrainingShape, mask_bytes: int = 1,
                  embedding_copies: int = 3) -> MemoryPlan:
    """The planned peak of one training step of a model whose weights take ``weights`` bytes.

    Args:
        mask_bytes: bytes per LoRA dropout-mask value (1: CUDA's fused dropout; 4: CPU).
        embedding_copies: (B, L, H) input-embedding tensors alive in the forward (3 for an MLM: lookup, image
            scatter, prefix scatter; 1 for a text-only LM).
    """
    t, b = training, training.compute_bytes
    tokens = t.batch * t.seq_len
    lora_by_layer: dict[int, list[Adapted]] = {}
    for adapted in t.lora:
        lora_by_layer.setdefault(adapted.layer, []).append(adapted)
    per_layer = [layer_activation_bytes(shape, t.batch, t.seq_len, b, lora_bytes_per_token(
        lora_by_layer.get(i, []), t.lora_rank, t.lora_dropout, mask_bytes)) for i in range(shape.layers)]
    final_norm = tokens * shape.hidden * 4
    if t.first_recorded_layer is None:
        saved, working = 0, 0
    elif t.gradient_checkpointing:
        saved = (shape.layers - t.first_recorded_layer) * tokens * shape.hidden * b + final_norm
        working = int((1 + K_RECOMPUTE) * max(per_layer[t.first_recorded_layer:]))
    else:
        recorded = per_layer[t.first_recorded_layer:]
        saved = sum(recorded) + final_norm
        working = int(K_SAVED * max(recorded))
    parts = {
        "embeddings": embedding_copies * tokens * shape.hidden * b,
        "logits": t.batch * ANSWER_TOKENS * shape.vocab * (b + 4 + 4),
        "bool_mask": t.batch * t.seq_len * t.seq_len,
        "grad_keys": t.grad_capture_layers * tokens * shape.kv_heads * shape.head_dim * b,
        "saved": saved,
        "working_set": working,
    }
    extras = parts["embeddings"] + parts["logits"] + parts["bool_mask"] + parts["grad_keys"]
    return MemoryPlan(weights=weights, trainable_state=16 * t.trainable_values, activations=saved + working,
                      extras=extras, parts=parts)


# --------------------------------------------------------------------------- from a model and its recipe
def quantized_linear_names(model: nn.Module, skip_modules: Sequence[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules bitsandbytes quantizes: every one no skip entry matches (under
    transformers' own matching rule)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and should_convert_module(name, list(skip_modules))]


def weight_bytes(model: nn.Module, dtype: str | None, quantization: Quantization | None = None,
                 skip_modules: Sequence[str] = ()) -> int:
    """Bytes of ``model``'s frozen parameters (a meta-device model is enough) as loaded with ``dtype`` (None:
    float32) or, with ``quantization``, in 4/8-bit for every Linear weight outside ``skip_modules``. Parameters
    that require grad (LoRA adapters) are trainable state, not weights: freeze the base model first."""
    if quantization is not None:
        b = DTYPE_BYTES[quantization.compute_dtype]
    else:
        b = DTYPE_BYTES[dtype or "float32"]
    seen: set[int] = set()
    total = 0
    quantized: set[str] = set()
    if quantization is not None:
        quantized = {f"{name}.weight" for name in quantized_linear_names(model, skip_modules)}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or param.requires_grad:  # tied weights count once; trained tensors elsewhere
            continue
        seen.add(id(param))
        n = param.numel()
        if name in quantized and quantization is not None:
            if quantization.bits == 8:
                total += n + 4 * param.shape[0]  # int8 weight + one float32 scale per row
            else:
                absmax = n / 64 * (1 + 4 / 256) if quantization.double_quant else n / 64 * 4
                total += int(n / 2 + absmax)
        else:
            total += n * b
    return total


def training_shape(interventions: Sequence[Intervention], shape: LMShape, batch: int, seq_len: int,
                   compute_bytes: int, gradient_checkpointing: bool) -> TrainingShape:
    """What ``interventions`` train, as `plan_training` needs it (layers resolved against ``shape``)."""
    first: int | None = None
    adapted: list[Adapted] = []
    rank, dropout, trainable, grad_layers = 0, 0.0, 0, 0
    d_q, d_kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    dims = {"q": (shape.hidden, d_q), "k": (shape.hidden, d_kv), "v": (shape.hidden, d_kv), "o": (d_q, shape.hidden)}
    for intervention in interventions:
        if isinstance(intervention, LearnedPrefix):
            first = 0
            trainable += intervention.num_tokens * shape.hidden
        elif isinstance(intervention, LateLoRA):
            layers = resolve_layers(intervention.layers, shape.layers, "LateLoRA.layers")
            first = layers[0] if first is None else min(first, layers[0])
            rank, dropout = intervention.rank, intervention.dropout
            for layer in layers:
                for projection in intervention.projections:
                    d_in, d_out = dims[projection]
                    adapted.append(Adapted(layer, d_in, d_out))
                    trainable += intervention.rank * (d_in + d_out)
        elif isinstance(intervention, KeyArtifactSuppression):
            grad_layers += len(resolve_layers(intervention.layers, shape.layers, "KeyArtifactSuppression.layers"))
    return TrainingShape(batch=batch, seq_len=seq_len, compute_bytes=compute_bytes,
                         gradient_checkpointing=gradient_checkpointing, first_recorded_layer=first,
                         lora=tuple(adapted), lora_rank=rank, lora_dropout=dropout, trainable_values=trainable,
                         grad_capture_layers=grad_layers)


# --------------------------------------------------------------------------- measurements (CPU)
def saved_activation_bytes(step: Callable[[], Any], exclude: Sequence[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``step()`` runs its forward, leaving out
    the storages of ``exclude`` (the parameters). Exact: every saved tensor passes through the hook."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(seen.values())


def peak_allocated_bytes(step: Callable[[], Any]) -> int:
    """Peak bytes allocated (above what was live before) while ``step()`` runs on CPU, from torch's profiler:
    every operator's own allocations minus frees, accumulated in start-time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
