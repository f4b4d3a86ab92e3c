"""The strict answer parser: the published-format answers, and responses that must not be read as a letter."""

from __future__ import annotations

import pytest

from vkvtrain.evaluation.blink import parse_choice


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("(B)", 4, "B"),
        ("B.", 4, "B"),
        ("B", 4, "B"),
        ("Answer: C", 4, "C"),
        ("The correct answer is (B)", 4, "B"),  # lmms-eval's first-capital regex reads "T" here
        ("  (B) the third image", 2, "B"),
        ("B. the third image", 2, "B"),
        ("B) the third image", 2, "B"),
        ("I think the answer is B.", 4, "B"),
        ("answer: (d)", 4, None),  # lower-case letters only count alone or in parentheses...
        ("(d)", 4, "D"),  # ...like here
        ("b", 2, "B"),
        ("**C**", 4, "C"),
        ("The answer is option A, the first image.", 4, "A"),
        ("Answer: (C) the third image", 4, "C"),
        ("I believe it's (B)", 4, "B"),
        ("The answer is B (the third image).", 2, "B"),
        ("Option (C).", 4, "C"),
        ("A:", 2, "A"),
    ],
)
def test_reads_claimed_letter(text: str, n: int, expected: str | None) -> None:
    assert parse_choice(text, n) == expected


@pytest.mark.parametrize(
    "text, n",
    [
        ("(A) or (B)", 4),  # two letters claimed
        ("Answer: A. Actually, the answer is B.", 4),
        ("option B or option C", 4),
        ("(A) the second image (B) the third image", 2),  # echoed choices
        ("E", 4),  # outside the choices
        ("(C)", 2),
        ("Answer: D", 3),
        ("A cat sits on the mat.", 4),  # an article is not a claim
        ("I", 4),  # a pronoun alone is outside A-D
        ("The answer is a dog", 4),
        ("", 4),
        ("   ", 4),
        ("None of the above", 4),
        ("AB", 4),
        ("A) the second image B) the third image", 2),  # echoed choices, closing-parenthesis markers
        ("Answer: B. Option A is wrong because...", 4),  # a second letter claimed in the explanation
    ],
)
def test_rejects_ambiguous_or_invalid(text: str, n: int) -> None:
    assert parse_choice(text, n) is None


def test_never_returns_letter_outside_choices() -> None:
    samples = ["A", "(B)", "C.", "Answer: D", "The correct answer is (E)", "F", "(J)"]
    for n in range(1, 6):
        for text in samples:
            got = parse_choice(text, n)
            assert got is None or "ABCDEFGHIJ".index(got) < n


def test_bad_choice_count() -> None:
    with pytest.raises(ValueError, match="n_choices"):
        parse_choice("A", 0)
