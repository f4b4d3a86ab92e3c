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
        ("answer: (d)", 4, "D"),  # lower-case letters count alone, after an answer keyword...
        ("(d)", 4, "D"),  # ...or in parentheses alone
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


#: families of responses a letter regex misreads, each with members beyond the reported ones
FAMILIES = {
    "leading letter and another named": [
        ("A because point (B) is closer", 4, None), ("B, since (A) is darker", 4, None),
        ("C: although (D) looks closer", 4, None), ("D; (C) is the other one", 4, None),
        ("B because A is darker", 4, "B"), ("A cat is left of (B)", 4, None),
    ],
    "negations": [
        ("It's A, not (B)", 4, "A"), ("Not (A).", 4, None), ("(C), not (A)", 4, "C"),
        ("The answer isn't (A); it is (C).", 4, "C"), ("Neither (A) nor (B).", 4, None),
        ("Rather than (A), I pick (D)", 4, "D"), ("instead of option D, option B", 4, "B"),
        ("not B) but C)", 4, "C"), ("Definitely not (B); I'd say (D).", 4, "D"), ("The answer is not (B)", 4, None),
        ("I'm not sure, maybe (C)", 4, "C"), ("No. (B)", 4, "B"),
    ],
    "capitalised words": [
        ("Answer: A cat is visible", 4, None), ("A person stands on the left.", 4, None), ("Answer: Both", 4, None),
        ("Option Blue is brighter", 4, None), ("Both images look alike", 4, None), ("Certainly the left one", 4, None),
        ("It is A cat.", 4, None), ("I think so", 4, None), ("Definitely C", 4, None), ("Answer: Dog", 4, None),
    ],
    "lower case after a keyword": [
        ("answer: (d)", 4, "D"), ("Answer: b", 4, "B"), ("the answer is c.", 4, "C"), ("Option a", 4, "A"),
        ("The answer is a dog", 4, None), ("answer: b because it is darker", 4, None), ("my choice: [c]", 4, "C"),
    ],
    "full-width forms": [
        ("（Ｂ）", 4, "B"), ("Ａｎｓｗｅｒ：Ｃ", 4, "C"), ("答案是（Ｄ）", 4, "D"), ("Ｂ", 4, "B"), ("Ｔｈｅ ａｎｓｗｅｒ ｉｓ （ａ）", 4, "A"),
    ],
    "line ends": [
        ("Answer: A\nThe dog is on the left.", 4, "A"), ("B\nBecause it is darker.", 4, "B"),
        ("It's C\nsince the edge is sharp", 4, "C"),
    ],
    "pronoun I": [
        ("I, for one, pick (B)", 4, "B"), ("I think (C)", 4, "C"), ("I would say the answer is D.", 4, "D"),
    ],
}


@pytest.mark.parametrize("family, text, n, expected",
                         [(family, *case) for family, cases in FAMILIES.items() for case in cases])
def test_response_families(family: str, text: str, n: int, expected: str | None) -> None:
    assert parse_choice(text, n) == expected, family


def test_never_returns_letter_outside_choices() -> None:
    samples = ["A", "(B)", "C.", "Answer: D", "The correct answer is (E)", "F", "(J)"]
    for n in range(1, 6):
        for text in samples:
            got = parse_choice(text, n)
            assert got is None or "ABCDEFGHIJ".index(got) < n


def test_bad_choice_count() -> None:
    with pytest.raises(ValueError, match="n_choices"):
        parse_choice("A", 0)


def test_docstring_examples_run() -> None:
    import doctest

    from vkvtrain.evaluation import parse

    result = doctest.testmod(parse)
    assert result.attempted > 0 and result.failed == 0
