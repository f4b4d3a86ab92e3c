"""Multiple-choice answer parsers for generated BLINK responses: the strict default and lmms-eval's.

A response *claims* a letter when it is the whole response ("B", "(B)", "B."), when it opens the response
as an option marker ("(B) the third image", "B. the third image", "B) ..."), when it follows an answer
keyword ("Answer: C", "The correct answer is (B)", "option B"), or when it stands in parentheses or before a
closing parenthesis anywhere ("... so (B)", "... B)"). The parser returns the claimed letter only when exactly one distinct letter is claimed and
it is one of the offered choices; otherwise None (counted as invalid). Articles and pronouns are never
read as letters ("A cat is ..." claims nothing, "I think (B)" claims B), unlike a first-capital regex that
reads "The correct answer is (B)" as "T".

:func:`lmms_eval_choice` is lmms-eval's BLINK parser (``_extract_answer_letter`` in
lmms_eval/tasks/blink/utils.py): the first letter of the response, after optional spaces and "(", in any case.
"""

from __future__ import annotations

import re

from vkvtrain.data.blink import LETTERS

_WHOLE = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:]?\s*$")
_OPENING = re.compile(r"^\s*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):](?=\s|$))")
_KEYWORD = re.compile(
    r"(?i:\b(?:answer|option|choice)s?)"
    r"(?:\s+(?i:is|would\s+be|should\s+be|will\s+be))?"
    r"\s*[:\-]?\s*"
    r"[\(\[]?([A-Z])[\)\]]?"
    r"(?![A-Za-z0-9'])"
)
_LMMS_EVAL_FIRST = re.compile(r"[\(\s]*([A-Z])[\)\.\s]*", flags=re.IGNORECASE)  # lmms-eval's pattern, verbatim
_PARENS = re.compile(r"[\(\[]([A-Z])[\)\]]")
_CLOSING = re.compile(r"(?<![A-Za-z0-9])([A-Z])\)")  # "B)" option markers anywhere


def claimed_letters(text: str) -> set[str]:
    """Every letter the response claims as its answer (see module docstring); may be empty or several."""
    m = _WHOLE.match(text)
    if m:
        return {m.group(1).upper()}
    claims: set[str] = set()
    m = _OPENING.match(text)
    if m:
        claims.add(next(g for g in m.groups() if g))
    claims.update(_KEYWORD.findall(text))
    claims.update(_PARENS.findall(text))
    claims.update(_CLOSING.findall(text))
    return claims


def parse_choice(text: str, n_choices: int) -> str | None:
    """The single answer letter claimed by ``text`` among the first ``n_choices`` letters, else None.

    >>> parse_choice("The correct answer is (B)", 4)
    'B'
    >>> parse_choice("(A) or (B)", 4) is None
    True
    >>> parse_choice("E", 4) is None
    True
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in 1..{len(LETTERS)}, got {n_choices}")
    claims = claimed_letters((text or "").replace("*", "").replace("`", ""))  # markdown emphasis
    if len(claims) != 1:
        return None
    (letter,) = claims
    return letter if letter in LETTERS[:n_choices] else None


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
