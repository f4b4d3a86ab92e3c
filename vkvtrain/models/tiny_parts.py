"""What every family's tiny checkpoint is built from: a byte-level tokenizer and the widths of each size.

Each family adapter turns these into its own config, model and processor (`FamilyAdapter.build_tiny`);
`vkvtrain.models.tiny` saves and caches the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: LM shapes per size: hidden, layers, attention heads, kv heads, mlp width.
LM_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "mid": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                intermediate_size=1536),
}
#: Vision-tower shapes per size: hidden, mlp width, layers, heads.
VISION_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "mid": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
}
SIZES: tuple[str, ...] = tuple(LM_SHAPES)


@dataclass(frozen=True)
class RandomShape:
    """The architecture of a randomly initialised offline model (LLaVA families): LM and vision widths, the
    vision tower's input side (8 px patches: ``(image_size / 8)^2`` tokens per crop), the anyres pinpoints
    (None = 1x1, 1x2, 2x1 and 2x2 crops) and whole-word tokens added to the byte-level vocabulary."""

    lm: Mapping[str, Any]
    vision: Mapping[str, Any]
    image_size: int = 32
    pinpoints: tuple[tuple[int, int], ...] | None = None
    extra_tokens: tuple[str, ...] = field(default=())

    @classmethod
    def of_size(cls, size: str) -> RandomShape:
        """The shape of the tiny checkpoint ``size`` ("tiny" or "mid")."""
        if size not in LM_SHAPES:
            raise ValueError(f"unknown tiny size {size!r}; choose one of {', '.join(SIZES)}.")
        return cls(lm=LM_SHAPES[size], vision=VISION_SHAPES[size])

    def tokenizer(self, tok: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
        """``tok`` (the family's byte-level tokenizer) with ``extra_tokens`` added as whole words."""
        if self.extra_tokens:
            tok.add_tokens(list(self.extra_tokens))
        return tok

    def grid_pinpoints(self) -> list[list[int]]:
        s = self.image_size
        points = self.pinpoints or ((s, s), (s, 2 * s), (2 * s, s), (2 * s, 2 * s))
        return [list(p) for p in points]


def build_tokenizer(specials: Sequence[str], pad: str, eos: str, bos: str | None = None,
                    ids: Mapping[str, int] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (one token per byte) plus the family's special tokens.

    It encodes any text losslessly and is fully determined by this code (no training, no download). Without
    ``ids`` the special tokens follow the 256 byte tokens; with ``ids`` (a published checkpoint's special-token
    ids) every special token keeps its published id, so the published config's token ids hold unchanged.
    """
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    if ids is not None:
        missing = [t for t in specials if t not in ids]
        taken = {t: i for t, i in ids.items() if i < len(vocab)}
        if missing or taken:
            raise ValueError(f"special-token ids: {missing} have none, {taken} collide with the byte tokens")
        vocab.update(ids)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, eos_token=eos, bos_token=bos, padding_side="left",
        additional_special_tokens=[t for t in specials if t not in {pad, eos, bos}],
    )


def lm_config_kwargs(size: str | Mapping[str, Any], tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """The LM config fields shared by every family at ``size`` (a tiny size or an LM shape): shapes, vocabulary
    and special-token ids."""
    shape = RandomShape.of_size(size).lm if isinstance(size, str) else size
    return dict(
        vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **shape,
    )


def token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of one special token (raises when the tokenizer does not know it as a single token)."""
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int) or found == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no single token {token!r}")
    return found
