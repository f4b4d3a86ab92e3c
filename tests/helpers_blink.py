"""Shared helpers for the BLINK tests: a naive full-forward choice scorer used as the oracle."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from vkvtrain import Prompt
from vkvtrain.data.blink import BlinkQuestion
from vkvtrain.evaluation.protocol import PromptProtocol


@torch.no_grad()
def naive_choice_scores(mlm: Any, q: BlinkQuestion, protocol: PromptProtocol) -> list[float]:
    """One unpadded full forward of images + prompt + continuation per choice; summed continuation log-prob."""
    scores = []
    for text in protocol.continuations(q):
        batch = mlm.encode([Prompt(images=list(q.images), text=protocol.text(q), prefix=protocol.prefix)])
        cont = torch.tensor([mlm.tokenizer(text, add_special_tokens=False)["input_ids"]])
        T = cont.shape[1]
        inputs = dict(batch.inputs)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], cont], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in inputs:  # text tokens are type 0
            extra = torch.zeros(1, T, dtype=inputs["mm_token_type_ids"].dtype)
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], extra], 1)
        logp = mlm.model(**inputs).logits[0, -T - 1 : -1].float().log_softmax(-1)  # (T, V)
        score = float(logp.gather(1, cont[0][:, None]).sum())
        scores.append(score / T if protocol.length_norm == "mean" else score)
    return scores


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the module's tests on one torch thread (imported into a test module, it applies there only).

    On the shared 2-core machine, 2-thread OpenMP barriers make the tiny models' many small ops 10-30x slower
    whenever other processes are busy; one thread keeps these tests at a fraction of a second each.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
