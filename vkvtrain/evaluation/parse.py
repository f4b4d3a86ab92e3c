"""Multiple-choice answer parsers for generated BLINK responses: the strict default and lmms-eval's.

The response is first NFKC-normalised (full-width "（Ｂ）" reads as "(B)") and stripped of markdown emphasis.
A response that is only a letter ("B", "(b)", "B.") answers that letter. Otherwise every *mention* of a letter
is collected:

* claims: an option marker opening the response ("(B) the third image", "B. ...", "B) ...", "B, since ...",
  or a bare "B" before a word or line break); a letter after an answer keyword ("Answer: C", "The correct
  answer is (B)", "option b.", in either case when it stands in brackets or before punctuation or the line's
  end); a capital letter after "it's / it is / that's ..." before punctuation ("It's A, not (B)"); a capital
  letter in brackets anywhere ("... so (B)") or before a closing parenthesis ("... B)");
* possible claims: "A" where an answer would stand but followed by a word ("A cat is visible", "Answer: A cat
  ..."): the article and the answer read the same, so it is neither read as an answer nor ignored;
* negated mentions ("not (B)", "isn't B", "neither (A) nor (B)", "rather than (C)", "instead of option D") are
  not claims. The pronoun "I" before a word is not a mention.

The parser returns a letter only when exactly one distinct letter is claimed, no *other* letter is possibly
claimed, and the letter is one of the offered choices; otherwise None (counted as invalid). So a response that
leads with one letter and names another ("A because point (B) is closer", "B, since (A) is darker") is
invalid: neither claim is taken over the other. Negations that follow the letter ("(A) is wrong") are not
parsed; such a response names two letters and is invalid.

:func:`lmms_eval_choice` is lmms-eval's BLINK parser (``_extract_answer_letter`` in
lmms_eval/tasks/blink/utils.py): the first letter of the response, after optional spaces and "(", in any case.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from vkvtrain.data.blink import LETTERS

#: after a letter, what ends an answer: punctuation, a bracket or the end of the line
_END = r"(?=[ \t]*(?:\r?\n|$|[.,;:!?)\]\-–—(]))"
#: a letter that is also an English word; "I" before a word is the pronoun and never a mention
_ARTICLE, _PRONOUN = "A", "I"

_WHOLE = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:]?\s*$")
_OPENING_MARKER = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):;,](?=\s|$)|([A-Z])[ \t]*\r?\n)")
_OPENING_WORD = re.compile(r"^\s*([A-Z])[ \t]+(?=[A-Za-z])")
_KEYWORD = r"(?i:\b(?:answer|option|choice)(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?)\s*[:\-]?\s*"
_COPULA = r"(?i:\b(?:it|that|this)(?:'s|’s|\s+is|\s+would\s+be|\s+must\s+be|\s+should\s+be))\s+"
_AFTER_KEYWORD_BRACKETED = re.compile(_KEYWORD + r"[\(\[]\s*([A-Za-z])\s*[\)\]]")
_AFTER_KEYWORD_BARE = re.compile(_KEYWORD + r"([A-Za-z])" + _END)
_AFTER_KEYWORD_WORD = re.compile(_KEYWORD + r"([A-Z])(?=[ \t]+[A-Za-z])")
_AFTER_COPULA = re.compile(_COPULA + r"[\(\[]?([A-Z])[\)\]]?" + _END)
_BRACKETED = re.compile(r"[\(\[]([A-Z])[\)\]]")
_CLOSING = re.compile(r"(?<![A-Za-z0-9(\[])([A-Z])\)")  # "B)"; "(B)" is a bracketed mention
_NEGATION = re.compile(
    r"(?i:\b(?:not|never|neither|nor|no|rather\s+than|instead\s+of|except(?:\s+for)?)|n't|n’t)\s*"
    r"(?i:(?:the\s+)?(?:answer|option|choice)\s*(?:is\s*)?)?[:\-]?\s*$"
)


@dataclass(frozen=True)
class Mention:
    """A letter mentioned at ``start``: a ``claim`` or a ``possible`` claim (an "A" that may be the article)."""

    letter: str
    start: int
    kind: Literal["claim", "possible"]


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").replace("*", "").replace("`", "")


def mentions(text: str) -> list[Mention]:
    """Every letter mention of a (normalised) response, negated ones left out, in no particular order."""
    found: list[Mention] = []
    m = _OPENING_MARKER.match(text)
    if m:
        letter = next(g for g in m.groups() if g)
        if not (letter == _PRONOUN and m.group(3)):  # "I, for one, ..." is the pronoun
            found.append(Mention(letter, m.start(), "claim"))
    m = _OPENING_WORD.match(text)
    if m and m.group(1) != _PRONOUN:
        found.append(Mention(m.group(1), m.start(1), "possible" if m.group(1) == _ARTICLE else "claim"))
    for pattern in (_AFTER_KEYWORD_BRACKETED, _AFTER_KEYWORD_BARE, _AFTER_COPULA):
        found += [Mention(m.group(1).upper(), m.start(), "claim") for m in pattern.finditer(text)]
    for m in _AFTER_KEYWORD_WORD.finditer(text):
        if m.group(1) != _PRONOUN:
            found.append(Mention(m.group(1), m.start(), "possible" if m.group(1) == _ARTICLE else "claim"))
    for pattern in (_BRACKETED, _CLOSING):
        found += [Mention(m.group(1), m.start(), "claim") for m in pattern.finditer(text)]
    return [x for x in found if not _NEGATION.search(text[: x.start])]


def claimed_letters(text: str) -> set[str]:
    """The letters a response claims (see the module docstring); may be empty or several."""
    text = _normalise(text)
    m = _WHOLE.match(text)
    if m:
        return {m.group(1).upper()}
    return {x.letter for x in mentions(text) if x.kind == "claim"}


def parse_choice(text: str, n_choices: int) -> str | None:
    """The single answer letter claimed by ``text`` among the first ``n_choices`` letters, else None.

    >>> parse_choice("The correct answer is (B)", 4)
    'B'
    >>> parse_choice("(A) or (B)", 4) is None
    True
    >>> parse_choice("A because point (B) is closer", 4) is None
    True
    >>> parse_choice("It's A, not (B)", 4)
    'A'
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in 1..{len(LETTERS)}, got {n_choices}")
    text = _normalise(text)
    m = _WHOLE.match(text)
    if m:
        letter = m.group(1).upper()
    else:
        found = mentions(text)
        claims = {x.letter for x in found if x.kind == "claim"}
        possible = {x.letter for x in found if x.kind == "possible"}
        if len(claims) != 1 or possible - claims:
            return None
        (letter,) = claims
    return letter if letter in LETTERS[:n_choices] else None


_LMMS_EVAL_FIRST = re.compile(r"[\(\s]*([A-Z])[\)\.\s]*", flags=re.IGNORECASE)  # lmms-eval's pattern, verbatim


def lmms_eval_choice(text: str, n_choices: int) -> str | None:
    """lmms-eval's reading of ``text``: its first letter (upper-cased) when that is among the first ``n_choices``
    letters, else None (lmms-eval scores such an answer wrong, as None is here).

    >>> lmms_eval_choice("The correct answer is (B)", 4) is None   # read as "T"
    True
    >>> lmms_eval_choice("b) the third image", 4)
    'B'
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in 1..{len(LETTERS)}, got {n_choices}")
    match = _LMMS_EVAL_FIRST.match((text or "").strip())
    letter = match.group(1).upper() if match else ""
    return letter if letter and letter in LETTERS[:n_choices] else None


PARSERS = {"strict": parse_choice, "lmms_eval": lmms_eval_choice}
