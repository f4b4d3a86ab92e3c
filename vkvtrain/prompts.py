"""Prompts with images -> one left-padded batch whose image token spans and grids are known.

Layout of one prompt (the family's own chat template decides the rest):
    [system / turn header] [prefix text] <image 1> ... <image n> [question text] [assistant header] [answer]
The optional prefix is placed immediately before the first image, inside the user turn, so under causal
attention the image tokens can attend to it. LLaVA-OneVision's and LLaVA-NeXT's templates render every image
of a turn before its text, so the prefix cannot be expressed as message content: vkvtrain renders the template
and then inserts the prefix right before the first image placeholder of the rendered string.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from PIL import Image

from vkvtrain.errors import ImageSpanTruncationError, PromptError
from vkvtrain.models.loaded import LoadedMLM

IGNORE_INDEX = -100


@dataclass
class Prompt:
    """One multimodal prompt.

    Attributes:
        images: the images, in order (BLINK uses up to 4).
        text: the question, placed after the images.
        prefix: optional text placed immediately before the first image.
        answer: optional assistant answer (training); the loss is taken on its tokens only.
    """

    images: list[Image.Image]
    text: str = ""
    prefix: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class ImageSpan:
    """Where one image lies in a tokenized batch.

    `start`/`stop` index the sequence dimension of `input_ids` (stop exclusive). The base-resolution grid of
    `grid_shape` = (H, W) occupies the first H*W tokens of the span, row-major; anyres crops and newline tokens,
    when present, follow it.
    """

    batch: int
    image: int
    start: int
    stop: int
    grid_shape: tuple[int, int]

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def grid_size(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]


@dataclass
class EncodedBatch:
    """A tokenized batch: `inputs` go to `model(**inputs)`; `spans[b][i]` locates image i of element b."""

    inputs: dict[str, Any]
    spans: list[list[ImageSpan]]
    texts: list[str] = field(default_factory=list)
    shortened: list[int] = field(default_factory=list)  # rows whose question text max_length shortened

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> EncodedBatch:
        """Move tensors to `device`; floating tensors (pixel values) also to `dtype` when given."""
        moved = {}
        for key, value in self.inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
            moved[key] = value
        return EncodedBatch(inputs=moved, spans=self.spans, texts=self.texts, shortened=self.shortened)


def render(mlm: LoadedMLM, prompt: Prompt) -> str:
    """The prompt as text in the family's chat template, prefix inserted, answer appended."""
    adapter = mlm.adapter
    if not prompt.images:
        raise PromptError("a prompt needs at least one image; vkvtrain reads image keys/values.")
    messages = adapter.messages(len(prompt.images), prompt.text)
    text = mlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    found = text.count(adapter.image_placeholder)
    if found != len(prompt.images):
        raise PromptError(
            f"the rendered prompt holds {found} image placeholders {adapter.image_placeholder!r} for "
            f"{len(prompt.images)} images; remove the placeholder text from the question or prefix."
        )
    if prompt.prefix:
        if adapter.image_placeholder in prompt.prefix:
            raise PromptError(f"the prefix contains the image placeholder {adapter.image_placeholder!r}; remove it.")
        at = text.index(adapter.image_placeholder)
        text = text[:at] + prompt.prefix + text[at:]
    if prompt.answer is not None:
        text = text + prompt.answer + adapter.turn_end
    return text


def encode(mlm: LoadedMLM, prompts: Sequence[Prompt], max_length: int | None = None) -> EncodedBatch:
    """Tokenize prompts into one left-padded batch and locate every image span.

    Args:
        prompts: B prompts, each with >= 1 image.
        max_length: longest sequence kept. A longer prompt loses tokens from the END OF ITS QUESTION TEXT only
            (a warning says how many prompts); its prefix, image spans, chat template and answer are never cut.
            A prompt that is too long even with no question text raises `ImageSpanTruncationError` naming it
            and the max_length it needs.
    Returns:
        `EncodedBatch` with inputs (input_ids (B, L), attention_mask (B, L), pixel values and the family's
        image metadata, and labels (B, L) when every prompt has an answer) and the spans.
    """
    if not prompts:
        raise PromptError("encode() got no prompts.")
    with_answer = [p.answer is not None for p in prompts]
    if any(with_answer) and not all(with_answer):
        raise PromptError("either every prompt of a batch has an answer (training) or none has.")
    prompts = list(prompts)
    texts, inputs = _tokenize(mlm, prompts)
    shortened: set[int] = set()
    for _ in range(_FIT_ATTEMPTS):
        over = _rows_over(inputs, max_length)
        if not over:
            break
        assert max_length is not None
        for row in over:
            prompts[row] = _shorter_question(mlm, prompts[row], row, int(inputs["attention_mask"][row].sum()),
                                             max_length)
            shortened.add(row)
        texts, inputs = _tokenize(mlm, prompts)
    else:
        if _rows_over(inputs, max_length):
            raise ImageSpanTruncationError(f"max_length={max_length}: prompts {_rows_over(inputs, max_length)} do "
                                           "not fit after shortening their questions; raise max_length.")
    if shortened:
        warnings.warn(f"max_length={max_length}: the question text of {len(shortened)} of {len(prompts)} prompt(s) "
                      "was shortened from its end (images, prefix and answers are kept whole).", stacklevel=2)
    spans = locate_images(mlm, inputs, [len(p.images) for p in prompts])
    return EncodedBatch(inputs=inputs, spans=spans, texts=texts, shortened=sorted(shortened))


_FIT_ATTEMPTS = 4  # re-tokenizing a cut question can merge differently at the cut; a few rounds settle it


def _tokenize(mlm: LoadedMLM, prompts: Sequence[Prompt]) -> tuple[list[str], dict[str, Any]]:
    texts = [render(mlm, p) for p in prompts]
    try:
        inputs = dict(
            mlm.processor(
                text=texts, images=[list(p.images) for p in prompts], padding=True, padding_side="left",
                return_tensors="pt",
            )
        )
    except ValueError as error:  # the image processor refuses an image it cannot resize (e.g. > 200:1 on Qwen2.5-VL)
        sizes = "; ".join(f"prompt {i}: " + ", ".join(f"{im.width}x{im.height}" for im in p.images)
                          for i, p in enumerate(prompts))
        raise PromptError(
            f"the {mlm.family} processor refused the images ({str(error).splitlines()[0]}); image sizes "
            f"(width x height) {sizes}. Crop or pad them to a shape the family accepts."
        ) from error
    if all(p.answer is not None for p in prompts):
        inputs["labels"] = answer_labels(mlm, inputs["input_ids"], [p.answer or "" for p in prompts])
    return texts, inputs


def _rows_over(inputs: dict[str, Any], max_length: int | None) -> list[int]:
    if max_length is None:
        return []
    return [row for row, n in enumerate(inputs["attention_mask"].sum(1).tolist()) if n > max_length]


def _shorter_question(mlm: LoadedMLM, prompt: Prompt, row: int, length: int, max_length: int) -> Prompt:
    """``prompt`` with its question text cut by the ``length - max_length`` tokens it is over, from its end."""
    question = mlm.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    if not question:
        raise ImageSpanTruncationError(
            f"prompt {row} needs {length} tokens with no question text (its images, prefix, answer and chat "
            f"template); max_length={max_length} would cut an image span or the answer. Raise max_length to at "
            f"least {length}, or use smaller / fewer images."
        )
    keep = max(0, len(question) - (length - max_length))
    return replace(prompt, text=str(mlm.tokenizer.decode(question[:keep])))


def answer_labels(mlm: LoadedMLM, input_ids: torch.Tensor, answers: Sequence[str]) -> torch.Tensor:
    """(B, L) labels: the answer tokens (and the turn end) of each row, -100 elsewhere."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, answer in enumerate(answers):
        suffix = mlm.tokenizer(answer + mlm.adapter.turn_end, add_special_tokens=False)["input_ids"]
        n = len(suffix)
        if input_ids[row, -n:].tolist() != suffix:
            raise PromptError(
                f"prompt {row}: the answer {answer!r} does not tokenize the same alone and in context; start the "
                "answer with a character that cannot merge with the assistant header (e.g. no leading space)."
            )
        labels[row, -n:] = input_ids[row, -n:]
    return labels


def image_runs(input_ids: torch.Tensor, image_token_id: int) -> list[list[tuple[int, int]]]:
    """Contiguous runs of image tokens per row: runs[b] = [(start, stop), ...] in sequence order."""
    runs: list[list[tuple[int, int]]] = [[] for _ in range(input_ids.shape[0])]
    for row, pos in (input_ids == image_token_id).nonzero().tolist():
        row_runs = runs[row]
        if row_runs and row_runs[-1][1] == pos:
            row_runs[-1] = (row_runs[-1][0], pos + 1)
        else:
            row_runs.append((pos, pos + 1))
    return runs


def spans_from_runs(
    mlm: LoadedMLM, runs: list[list[tuple[int, int]]], inputs: dict[str, Any]
) -> list[list[ImageSpan]]:
    """Attach each run its image's grid shape (asked of the family adapter) and check it fits."""
    grids = mlm.adapter.image_grids(mlm.model, inputs, sum(len(r) for r in runs))
    spans: list[list[ImageSpan]] = []
    flat = 0
    for row, row_runs in enumerate(runs):
        row_spans = []
        for image, (start, stop) in enumerate(row_runs):
            mlm.adapter.check_span_length(stop - start, grids[flat], f"prompt {row} image {image}")
            row_spans.append(ImageSpan(row, image, start, stop, grids[flat]))
            flat += 1
        spans.append(row_spans)
    return spans


def locate_images(mlm: LoadedMLM, inputs: dict[str, Any], images_per_prompt: Sequence[int]) -> list[list[ImageSpan]]:
    """Split each row's image tokens into per-image spans (contiguous runs) and attach their grid shapes."""
    runs = image_runs(inputs["input_ids"], mlm.image_token_id)
    for row, row_runs in enumerate(runs):
        if len(row_runs) != images_per_prompt[row]:
            raise PromptError(
                f"prompt {row}: found {len(row_runs)} separate image token runs for {images_per_prompt[row]} images; "
                "the chat template must separate consecutive images by at least one text token."
            )
    return spans_from_runs(mlm, runs, inputs)
