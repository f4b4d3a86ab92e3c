"""Answering BLINK questions in batches: choice likelihood from one cached prefill, or greedy generation.

Likelihood mode encodes images + prompt of B questions once (one forward, ``use_cache=True``). The
next-token logits of that prefill score each choice's first continuation token. Multi-token
continuations then reuse the prefill cache: for each choice index, only the continuation tokens of the
B questions run on the cache, which is cropped back to the prompt afterwards, so the images and prompt are
never encoded again and the cache is never copied.

Both modes call ``on_prefill(batch, cache)`` with the prompt's KV cache (DynamicCache, layers' values
(B, n_kv_heads, L, head_dim)) before anything else touches it; the latent probes read image value tokens
there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from vkvtrain.data.blink import BlinkQuestion
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.prompts import EncodedBatch, Prompt

PrefillHook = Callable[[EncodedBatch, Any], None]


@dataclass
class Answer:
    """The model's answer to one question: choice log-likelihoods (likelihood mode) or text (generation)."""

    scores: list[float] | None = None
    response: str | None = None


def prompts_for(questions: Sequence[BlinkQuestion], protocol: PromptProtocol) -> list[Prompt]:
    return [Prompt(images=list(q.images), text=protocol.text(q), prefix=protocol.prefix) for q in questions]


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
    # logits_to_keep=1: only the last position's logits (a full (B, L, vocab) tensor is GBs on real models)
    out = mlm.model(**batch.inputs, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if on_prefill is not None:
        on_prefill(batch, cache)
    first_logp = out.logits[:, -1].float().log_softmax(-1).cpu()  # (B, V)

    # conts[b][c]: token ids of choice c's continuation for question b
    conts: list[list[list[int]]] = []
    for q in questions:
        tokens = [tok(text, add_special_tokens=False)["input_ids"] for text in protocol.continuations(q)]
        if not all(tokens):
            raise ValueError(f"a continuation of {q.idx} tokenizes to nothing: {protocol.continuations(q)}")
        conts.append(tokens)
    logp = [[float(first_logp[b, c[0]]) for c in cs] for b, cs in enumerate(conts)]

    B = len(questions)
    prefix_mask = batch.inputs["attention_mask"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for choice in range(max(len(cs) for cs in conts)):
        # Tokens 1.. of choice `choice` for every question, run on the prefill cache (batch rows unchanged,
        # so intervention hooks keep their per-row state); the cache is cropped back to the prompt after.
        rest = [cs[choice][:-1] if choice < len(cs) else [] for cs in conts]  # inputs predicting tokens 1..
        T = max(len(r) for r in rest)
        if T == 0:
            continue
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=prefix_mask.dtype)
        for b, r in enumerate(rest):
            ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, : len(r)] = 1
        kwargs: dict[str, Any] = dict(
            input_ids=ids.to(mlm.device),
            attention_mask=torch.cat([prefix_mask, mask.to(prefix_mask.device)], 1),
            past_key_values=cache,
            use_cache=True,
        )
        pos = mlm.adapter.continuation_position_ids(mlm.model, prefix_mask, torch.arange(B), T)
        if pos is not None:
            kwargs["position_ids"] = pos
        step_logp = mlm.model(**kwargs).logits.float().log_softmax(-1).cpu()  # (B, T, V)
        cache.crop(-T)
        for b, cs in enumerate(conts):
            if choice < len(cs):
                c = cs[choice]
                logp[b][choice] += float(sum(step_logp[b, t - 1, c[t]] for t in range(1, len(c))))

    if protocol.length_norm == "mean":
        logp = [[v / len(c) for v, c in zip(row, cs)] for row, cs in zip(logp, conts)]
    return [Answer(scores=row) for row in logp]


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
