"""Strict multiple-choice answer parser for generated BLINK responses.

A response *claims* a letter when it is the whole response ("B", "(B)", "B."), when it opens the response
as an option marker ("(B) the third image", "B. the third image", "B) ..."), when it follows an answer
keyword ("Answer: C", "The correct answer is (B)", "option B"), or when it stands in parentheses or before a
closing parenthesis anywhere ("... so (B)", "... B)"). The parser returns the claimed letter only when exactly one distinct letter is claimed and
it is one of the offered choices; otherwise None (counted as invalid). Articles and pronouns are never
read as letters ("A cat is ..." claims nothing, "I think (B)" claims B), unlike a first-capital regex that
reads "The correct answer is (B)" as "T".
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
