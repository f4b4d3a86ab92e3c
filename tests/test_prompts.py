"""Prompt building: chat templates, prefix placement, left padding, spans, truncation, labels."""

from __future__ import annotations

import pytest
import torch

from vkvtrain import Prompt
from vkvtrain.errors import ImageSpanTruncationError, PromptError
from vkvtrain.prompts import IGNORE_INDEX


def two_prompts(make_image, prefix=None):
    return [
        Prompt([make_image(40, 30, 1), make_image(32, 32, 2)], "Which is brighter?", prefix=prefix),
        Prompt([make_image(64, 48, 3), make_image(20, 50, 4)], "Q?"),
    ]


def test_spans_hold_exactly_the_image_tokens(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    batch = mlm.encode(two_prompts(make_image))
    ids = batch.input_ids
    image_id = mlm.image_token_id
    assert [len(row) for row in batch.spans] == [2, 2]
    for row, spans in enumerate(batch.spans):
        covered = torch.zeros(ids.shape[1], dtype=torch.bool)
        for span in spans:
            assert (ids[row, span.start : span.stop] == image_id).all()
            assert span.length >= span.grid_size
            covered[span.start : span.stop] = True
        assert torch.equal(covered, ids[row] == image_id)  # nothing outside the spans is an image token
        assert spans[0].stop < spans[1].start  # separated, in order


def test_left_padding(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    batch = mlm.encode(two_prompts(make_image))
    mask = batch.inputs["attention_mask"]
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0 and mask[short, -1] == 1
    assert (batch.input_ids[short, : int((mask[short] == 0).sum())] == mlm.tokenizer.pad_token_id).all()


def test_prefix_sits_immediately_before_the_first_image(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    prefix = "PFX-marker"
    batch = mlm.encode(two_prompts(make_image, prefix=prefix))
    text = batch.texts[0]
    assert text.index(prefix) + len(prefix) == text.index(mlm.adapter.image_placeholder)
    prefix_ids = mlm.tokenizer(prefix, add_special_tokens=False)["input_ids"]
    first = batch.spans[0][0].start
    # Qwen2.5-VL wraps each image in <|vision_start|> ... <|vision_end|>: the prefix precedes the start token.
    offset = 1 if family == "qwen2_5_vl" else 0
    assert batch.input_ids[0, first - offset - len(prefix_ids) : first - offset].tolist() == prefix_ids
    assert prefix not in batch.texts[1]


def test_images_before_the_question(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    text = mlm.encode(two_prompts(make_image)).texts[0]
    assert text.rindex(mlm.adapter.image_placeholder) < text.index("Which is brighter?")


QUESTION = "Which of the two images shows the brighter object, counting every pixel of it carefully?"


@pytest.mark.parametrize("with_answer", [True, False])
def test_max_length_shortens_only_the_question(tiny_mlm, family, make_image, with_answer):
    """Over max_length, a prompt loses the end of its question text only: prefix, images, template and answer
    stay whole (a training row never loses its answer tokens)."""
    mlm = tiny_mlm(family)
    answer = "(B) the second" if with_answer else None
    prompts = [Prompt([make_image(40, 30, 1), make_image(32, 32, 2)], QUESTION, prefix="Look.", answer=answer),
               Prompt([make_image(32, 32, 3)], "Q?", answer="(A)" if with_answer else None)]
    full = mlm.encode(prompts)
    max_length = int(full.inputs["attention_mask"][0].sum()) - 15
    with pytest.warns(UserWarning, match="question text of 1 of 2 prompt"):
        cut = mlm.encode(prompts, max_length=max_length)
    assert cut.shortened == [0] and cut.input_ids.shape[1] <= max_length
    assert int(cut.inputs["attention_mask"][0].sum()) >= max_length - 3  # cut by what was needed, not more
    assert "Look." in cut.texts[0] and cut.texts[1] == full.texts[1]
    assert QUESTION not in cut.texts[0] and QUESTION[:20] in cut.texts[0]  # its end was cut, its start kept
    assert [[s.length for s in row] for row in cut.spans] == [[s.length for s in row] for row in full.spans]
    for row in cut.spans:
        for span in row:
            assert (cut.input_ids[span.batch, span.start : span.stop] == mlm.image_token_id).all()
    if with_answer:  # the same answer tokens, still at the end of each row
        for b in range(2):
            got = cut.inputs["labels"][b][cut.inputs["labels"][b] != IGNORE_INDEX]
            assert torch.equal(got, full.inputs["labels"][b][full.inputs["labels"][b] != IGNORE_INDEX])
    with torch.no_grad():
        mlm.model(**cut.inputs)  # still a valid batch


def test_max_length_that_would_cut_images_or_answer_names_the_row(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    prompts = [Prompt([make_image(32, 32, 3)], "Q?", answer="(A)"),
               Prompt([make_image(40, 30, 1), make_image(32, 32, 2)], QUESTION, answer="(B) the second")]
    bare = mlm.encode([Prompt(prompts[1].images, "", answer=prompts[1].answer)])
    needed = int(bare.inputs["attention_mask"][0].sum())  # oracle: the row with no question text at all
    with pytest.raises(ImageSpanTruncationError, match=rf"prompt 1 needs {needed} tokens with no question text"):
        mlm.encode(prompts, max_length=needed - 1)
    fits = mlm.encode(prompts, max_length=needed)  # exactly enough: the question is dropped, nothing else
    assert fits.input_ids.shape[1] == needed and fits.shortened == [1]


def test_labels_cover_the_answer_only(tiny_mlm, family, make_image):
    mlm = tiny_mlm(family)
    prompts = [Prompt([make_image(32, 32)], "Q?", answer="(B)"), Prompt([make_image(40, 30)], "Longer Q?", answer="A")]
    batch = mlm.encode(prompts)
    labels = batch.inputs["labels"]
    for row, answer in enumerate(["(B)", "A"]):
        kept = labels[row][labels[row] != IGNORE_INDEX]
        assert mlm.tokenizer.decode(kept) == answer + mlm.adapter.turn_end
    out = mlm.model(**batch.inputs)
    assert torch.isfinite(out.loss)


def test_prompt_errors(tiny_mlm, make_image):
    mlm = tiny_mlm("llava_next")
    with pytest.raises(PromptError, match="at least one image"):
        mlm.encode([Prompt([], "q")])
    with pytest.raises(PromptError, match="placeholder"):
        mlm.encode([Prompt([make_image(32, 32)], "look at <image> here")])
    with pytest.raises(PromptError, match="every prompt"):
        mlm.encode([Prompt([make_image(32, 32)], "q", answer="A"), Prompt([make_image(32, 32)], "q")])
