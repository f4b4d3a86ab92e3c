"""Choice scoring from one cached prefill agrees with a naive full-forward scorer; probes read the cache."""

from __future__ import annotations

import pytest
import torch

from helpers_blink import naive_choice_scores, one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain.data.synthetic_blink import synthetic_blink_questions
from vkvtrain.evaluation.latent import image_grid_values
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.evaluation.scoring import generate_answers, prompts_for, score_choices


def _mixed_questions():
    # Different image counts (1..4) and choice counts (2..4) in one batch -> left padding and uneven rows.
    qs = synthetic_blink_questions(1, seed=4, subtasks=["Counting", "Jigsaw", "Forensic_Detection", "Relative_Reflectance"], image_size=48)
    return qs


@pytest.mark.parametrize("continuation, norm", [("letter_and_text", "sum"), ("paren_letter", "mean"), ("letter", "sum")])
def test_cached_scorer_matches_naive_oracle(tiny_mlm, family, continuation, norm) -> None:
    mlm = tiny_mlm(family)
    qs = _mixed_questions()
    proto = PromptProtocol(continuation=continuation, length_norm=norm)
    got = score_choices(mlm, qs, proto)
    for q, a in zip(qs, got):
        want = naive_choice_scores(mlm, q, proto)
        assert len(a.scores) == q.n_choices
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(want), atol=2e-4, rtol=1e-4)
        # the scores must discriminate (a constant scorer would also "agree" with itself)
    assert len({round(s, 3) for a in got for s in a.scores}) > 3


def test_images_and_prompt_encoded_once(tiny_mlm) -> None:
    mlm = tiny_mlm("llava_onevision")
    qs = _mixed_questions()
    calls = {"projector": 0, "lm": 0, "lm_tokens": []}
    proj = mlm.adapter.projector(mlm.model).register_forward_hook(lambda *a: calls.__setitem__("projector", calls["projector"] + 1))

    def on_lm(_m, _args, kwargs):
        calls["lm"] += 1
        calls["lm_tokens"].append(tuple(kwargs["inputs_embeds"].shape[:2]))

    lm = mlm.adapter.language_model(mlm.model).register_forward_pre_hook(on_lm, with_kwargs=True)
    try:
        score_choices(mlm, qs, PromptProtocol(continuation="letter_and_text"))
    finally:
        proj.remove()
        lm.remove()
    L = mlm.encode(prompts_for(qs, PromptProtocol())).input_ids.shape[1]
    n_choices = max(q.n_choices for q in qs)
    # byte-level tokenizer: one token per byte; choice c's pass runs the longest "(X) text" minus its last token
    longest = [max(len(f"(A) {q.choices[c]}") for q in qs if c < q.n_choices) - 1 for c in range(n_choices)]
    assert calls["projector"] == 1  # all images of the batch encoded in one pass
    assert calls["lm"] == 1 + n_choices  # one prefill, then one continuation pass per choice index
    assert calls["lm_tokens"][0] == (len(qs), L)
    assert calls["lm_tokens"][1:] == [(len(qs), t) for t in longest]  # only continuation tokens, never the prompt


def test_probe_values_from_cache_equal_capture(tiny_mlm, family) -> None:
    mlm = tiny_mlm(family)
    qs = synthetic_blink_questions(1, seed=0, subtasks=["Art_Style", "Visual_Correspondence"], image_size=48)
    batch = mlm.encode(prompts_for(qs, PromptProtocol()))
    layers = [0, mlm.num_layers - 1]
    with torch.no_grad(), mlm.capture(layers) as kv:
        out = mlm.model(**batch.inputs, use_cache=True)
    for b, spans in enumerate(batch.spans):
        for span in spans:
            grids = image_grid_values(out.past_key_values, layers, b, span)
            for j, layer in enumerate(layers):
                torch.testing.assert_close(grids[j], kv.image(layer, b, span.image).grid("values").float())


def test_generation_returns_text_and_cache(tiny_mlm) -> None:
    mlm = tiny_mlm("qwen2_5_vl")
    qs = _mixed_questions()
    seen = {}

    def hook(batch, cache):
        seen["L"] = batch.input_ids.shape[1]
        seen["cache_len"] = cache.get_seq_length()

    answers = generate_answers(mlm, qs, PromptProtocol(), max_new_tokens=3, on_prefill=hook)
    assert len(answers) == len(qs) and all(isinstance(a.response, str) for a in answers)
    assert seen["L"] < seen["cache_len"] <= seen["L"] + 3


def test_cached_scorer_matches_oracle_with_attention_blocking(tiny_mlm) -> None:
    # A hook-based intervention with per-prompt state must still see the continuation passes as the prompt's.
    from vkvtrain.interventions.blocking import AttentionBlocking

    mlm = tiny_mlm("llava_onevision")
    AttentionBlocking(layers=[1, 2, 3], positions=[0, 1, 2, 3, 5, 7]).attach(mlm)
    qs = _mixed_questions()[:2]  # 1 and 3 images: left padding; blocking makes each forward slower
    proto = PromptProtocol(continuation="letter_and_text")
    for q, a in zip(qs, score_choices(mlm, qs, proto)):
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(naive_choice_scores(mlm, q, proto)), atol=2e-4, rtol=1e-4)
