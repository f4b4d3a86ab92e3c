"""The BLINK prompt protocol: how a question becomes model input text, and what a scored choice is.

The default reproduces lmms-eval's BLINK task (lmms_eval/tasks/blink): images in image_1..image_4 order,
then ``pre_prompt.format("A, B, ...") + doc["prompt"] + post_prompt`` with
``pre_prompt = "Note: You only need to respond with {} without providing any additional information.\\n"``
and an empty post_prompt, so numbers are comparable with published lmms-eval ones. See eval/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vkvtrain.data.blink import LETTERS, BlinkQuestion
from vkvtrain.errors import RecipeError

LMMS_EVAL_PRE_PROMPT = "Note: You only need to respond with {} without providing any additional information.\n"

Continuation = Literal["letter", "paren_letter", "letter_and_text"]


@dataclass
class PromptProtocol:
    """How a BLINK question is shown to the model and how choices are scored by likelihood.

    pre_prompt: text before the BLINK ``prompt``; ``{}`` receives the option letters joined by
        ``option_separator`` ("A, B, C").
    post_prompt: text after the BLINK ``prompt``.
    prefix: optional text placed before the first image (vkvtrain.Prompt.prefix; e.g. a learned prefix).
    continuation: the answer text scored per choice in likelihood mode: "letter" ("B"),
        "paren_letter" ("(B)") or "letter_and_text" ("(B) the third image").
    length_norm: in likelihood mode, rank choices by the summed ("sum") or mean per-token ("mean") log-prob.
    """

    pre_prompt: str = LMMS_EVAL_PRE_PROMPT
    post_prompt: str = ""
    option_separator: str = ", "
    prefix: str | None = None
    continuation: Continuation = "letter"
    length_norm: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        if self.continuation not in ("letter", "paren_letter", "letter_and_text"):
            raise RecipeError(
                f"prompt.continuation={self.continuation!r}; choose letter, paren_letter or letter_and_text"
            )
        if self.length_norm not in ("sum", "mean"):
            raise RecipeError(f"prompt.length_norm={self.length_norm!r}; choose sum or mean")
        if self.pre_prompt.count("{}") > 1:
            raise RecipeError("prompt.pre_prompt may hold at most one {} (the option letters)")

    def text(self, q: BlinkQuestion) -> str:
        """The text placed after the images."""
        options = self.option_separator.join(LETTERS[: q.n_choices])
        return self.pre_prompt.format(options) + q.prompt + self.post_prompt

    def continuations(self, q: BlinkQuestion) -> list[str]:
        """One answer string per choice, in choice order."""
        if self.continuation == "letter":
            return list(q.letters)
        if self.continuation == "paren_letter":
            return [f"({c})" for c in q.letters]
        return [f"({c}) {text}" for c, text in zip(q.letters, q.choices)]
