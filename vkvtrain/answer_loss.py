"""The answer-only language-model loss of a training step, computed over the answer window only.

Prompts are left-padded and every answer sits at the end of its row, so the last K positions, K = (length from
the first labelled column) + 1, hold every prediction the loss needs. Skipping the other positions' logits
(B x L x vocab, ~150k wide for these families) is most of a tiny model's step and gigabytes on a real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vkvtrain.errors import RecipeError
from vkvtrain.prompts import IGNORE_INDEX


@dataclass
class AnswerForward:
    """One forward's output over the answer window.

    Attributes:
        output: the model output; ``output.logits`` is (B, K, V).
        token_loss_sum: scalar, the summed cross-entropy of every answer token of the batch.
        n_tokens: scalar long, how many answer tokens the batch has.
        targets: (B, K - 1) labels aligned with ``output.logits[:, :-1]`` (-100 off the answers).
    """

    output: Any
    token_loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    targets: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """Mean cross-entropy over the batch's answer tokens (what transformers' own ``loss`` is)."""
        return self.token_loss_sum / self.n_tokens.clamp_min(1)


def answer_forward(model: nn.Module, inputs: dict[str, Any]) -> AnswerForward:
    """Forward whose LM head runs only over the answer window (``inputs["labels"]`` marks the answers)."""
    labels = inputs["labels"]
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if len(labelled) == 0:
        raise RecipeError("a training batch has no answer tokens; check data.answer_field.")
    first = int(labelled[0])
    keep = labels.shape[1] - first + 1
    # use_cache=False: nothing decodes after this forward, and a cache would hold every layer's K/V.
    out = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep, use_cache=False)
    targets = labels[:, labels.shape[1] - keep + 1:]  # (B, K-1): targets of logits[:, :-1]
    logits = out.logits[:, :-1]
    token_loss_sum = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
    return AnswerForward(out, token_loss_sum, (targets != IGNORE_INDEX).sum(), targets)


def output_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: greedy decoding reproduces every answer token (teacher-forced argmax == target).

    Args:
        logits: (B, T, V) predictions of ``targets`` (B, T), -100 off the answer (already shifted).
    """
    ok = (logits.argmax(-1) == targets) | (targets == IGNORE_INDEX)
    return ok.all(dim=1)
