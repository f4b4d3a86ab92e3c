"""Answering BLINK questions in batches: choice likelihood from one cached prefill, or greedy generation.

Likelihood mode encodes images + prompt of B questions once (one forward, ``use_cache=True``). The
next-token logits of that prefill score each choice's first continuation token. Multi-token
continuations then reuse the prefill cache: its rows are gathered per choice (``batch_select_indices``,
row r = question q(r)) and only the continuation tokens are run, so the images and prompt are never
encoded again.

Both modes call ``on_prefill(batch, cache)`` with the prompt's KV cache (DynamicCache, layers' values
(B, n_kv_heads, L, head_dim)) before anything else touches it; the latent probes read image value tokens
there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from vkvtrain.data.blink import BlinkQuestion
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.models.base import unwrap_model
from vkvtrain.prompts import EncodedBatch, Prompt

PrefillHook = Callable[[EncodedBatch, Any], None]


@dataclass
class Answer:
    """The model's answer to one question: choice log-likelihoods (likelihood mode) or text (generation)."""

    scores: list[float] | None = None
    response: str | None = None


def prompts_for(questions: Sequence[BlinkQuestion], protocol: PromptProtocol) -> list[Prompt]:
    return [Prompt(images=list(q.images), text=protocol.text(q), prefix=protocol.prefix) for q in questions]


def _continuation_position_ids(model: Any, prefix_mask: Tensor, rows: Tensor, T: int) -> Tensor | None:
    """Positions of continuation tokens when the model does not derive them from the cache length.

    Models with multimodal rotary positions (transformers' ``rope_deltas`` convention, Qwen2-VL family)
    give the prompt positions that differ from cache indices; the next position of row b is
    ``n_real_tokens[b] + rope_deltas[b]``. Returns (3, R, T) for those, None for 1-D RoPE models (whose
    positions are the cache indices, which a plain call continues correctly).
    """
    inner = getattr(unwrap_model(model), "model", None)
    deltas = getattr(inner, "rope_deltas", None)
    if deltas is None:
        return None
    nxt = prefix_mask.sum(1, keepdim=True).to(deltas.device) + deltas  # (B, 1)
    pos = nxt[rows.to(deltas.device)] + torch.arange(T, device=deltas.device)[None]  # (R, T)
    return pos[None].expand(3, -1, -1)


@torch.no_grad()
def score_choices(
    mlm: Any,
    questions: Sequence[BlinkQuestion],
    protocol: PromptProtocol,
    on_prefill: PrefillHook | None = None,
) -> list[Answer]:
    """Log-likelihood of every choice continuation, one prefill per question.

    Returns one Answer per question with ``scores`` (n_choices floats): summed (or mean, per
    ``protocol.length_norm``) log-prob of the continuation tokens given images + prompt.
    """
    tok = mlm.tokenizer
    batch = mlm.encode(prompts_for(questions, protocol)).to(mlm.device)
    out = mlm.model(**batch.inputs, use_cache=True)
    cache = out.past_key_values
    if on_prefill is not None:
        on_prefill(batch, cache)
    first_logp = out.logits[:, -1].float().log_softmax(-1)  # (B, V)

    conts: list[list[int]] = []
    rows: list[int] = []
    for b, q in enumerate(questions):
        for text in protocol.continuations(q):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"continuation {text!r} tokenizes to nothing")
            conts.append(ids)
            rows.append(b)
    row_t = torch.tensor(rows, device=first_logp.device)
    R, T = len(conts), max(len(c) for c in conts)
    logp = torch.zeros(R, dtype=torch.float64)
    firsts = torch.tensor([c[0] for c in conts], device=first_logp.device)
    logp += first_logp[row_t, firsts].double().cpu()

    if T > 1:
        # Rest of each continuation from the cached prefix: rows gathered per choice, only T-1 new tokens.
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((R, T - 1), pad, dtype=torch.long)
        mask = torch.zeros(R, T - 1, dtype=torch.long)
        for r, c in enumerate(conts):
            ids[r, : len(c) - 1] = torch.tensor(c[:-1])
            mask[r, : len(c) - 1] = 1
        prefix_mask = batch.inputs["attention_mask"]
        cache.batch_select_indices(row_t.to(prefix_mask.device))
        kwargs: dict[str, Any] = dict(
            input_ids=ids.to(mlm.device),
            attention_mask=torch.cat([prefix_mask[row_t.to(prefix_mask.device)], mask.to(prefix_mask.device)], 1),
            past_key_values=cache,
            use_cache=True,
        )
        pos = _continuation_position_ids(mlm.model, prefix_mask, row_t, T - 1)
        if pos is not None:
            kwargs["position_ids"] = pos
        step_logp = mlm.model(**kwargs).logits.float().log_softmax(-1).cpu()  # (R, T-1, V)
        for r, c in enumerate(conts):
            for t in range(1, len(c)):
                logp[r] += float(step_logp[r, t - 1, c[t]])

    if protocol.length_norm == "mean":
        logp /= torch.tensor([len(c) for c in conts], dtype=torch.float64)
    answers: list[Answer] = []
    k = 0
    for q in questions:
        answers.append(Answer(scores=logp[k : k + q.n_choices].tolist()))
        k += q.n_choices
    return answers


@torch.no_grad()
def generate_answers(
    mlm: Any,
    questions: Sequence[BlinkQuestion],
    protocol: PromptProtocol,
    max_new_tokens: int = 16,
    on_prefill: PrefillHook | None = None,
) -> list[Answer]:
    """Greedy generation for a batch of questions (left-padded). Returns Answers with ``response`` text.

    ``on_prefill`` receives the cache after generation; its first L positions (the prompt) are the prefill's.
    """
    tok = mlm.tokenizer
    batch = mlm.encode(prompts_for(questions, protocol)).to(mlm.device)
    L = batch.inputs["input_ids"].shape[1]
    out = mlm.model.generate(
        **batch.inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        return_dict_in_generate=True,
    )
    if on_prefill is not None:
        on_prefill(batch, out.past_key_values)
    texts = tok.batch_decode(out.sequences[:, L:], skip_special_tokens=True)
    return [Answer(response=t.strip()) for t in texts]
