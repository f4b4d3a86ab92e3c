"""Tiny, deterministic, randomly initialised checkpoints of the real MLM classes, built offline.

`tiny://llava_onevision`, `tiny://qwen2_5_vl` and `tiny://llava_next` name real transformers models
(LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, LlavaNextForConditionalGeneration)
with a byte-level tokenizer, the family's image processor and a chat template in the family's format, all built
here without any download and saved with `save_pretrained` into a cache folder. Building is seeded: the same
library versions give byte-identical weights. The size "mid" (~30M parameters) gives benchmark-sized models of
the same classes; "tiny" (~0.3M) is what tests, CI and the demo use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLImageProcessorPil,
    SiglipVisionConfig,
)

from vkvtrain.errors import UnsupportedModelError
from vkvtrain.models.processors import ImageOnlyLlavaOnevisionProcessor, ImageOnlyQwen2_5_VLProcessor
from vkvtrain.outputs import apply_default_modes, staging_dir

TINY_SCHEME = "tiny://"
SIZES = ("tiny", "mid")
SEED = 0
BUILD_VERSION = 1  # bump when the recipe below changes, so caches rebuild

# Chat templates in each family's published format. LLaVA-OneVision and LLaVA-NeXT render every image of a
# turn before its text (so a prefix before the image has to be placed by vkvtrain, see vkvtrain/prompts.py).
CHATML_LLAVA_OV = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_QWEN2_5_VL = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_LLAVA_NEXT = (
    "{% for message in messages %}{% if loop.index0 == 0 %}{{ '<|begin_of_text|>' }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

SPECIAL_TOKENS: dict[str, list[str]] = {
    "llava_onevision": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
    "qwen2_5_vl": [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|image_pad|>", "<|video_pad|>",
    ],
    "llava_next": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<pad>", "<image>"],
}

# LM shapes per size: hidden, layers, attention heads, kv heads, mlp width.
LM_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "mid": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                intermediate_size=1536),
}
VISION_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "mid": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
}


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (one token per byte) plus the family's special tokens.

    It encodes any text losslessly and is fully determined by this code (no training, no download).
    """
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS[family]
    if family == "llava_next":
        pad, eos, bos = "<pad>", "<|eot_id|>", "<|begin_of_text|>"
    else:
        pad, eos, bos = "<|endoftext|>", "<|im_end|>", None
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, eos_token=eos, bos_token=bos, padding_side="left",
        additional_special_tokens=[t for t in specials if t not in {pad, eos, bos}],
    )
    return wrapped


def _text_config(family: str, size: str, tokenizer: PreTrainedTokenizerFast) -> Any:
    shape = LM_SHAPES[size]
    common = dict(
        vocab_size=len(tokenizer), max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, **shape,
    )
    if family == "llava_next":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if family == "qwen2_5_vl":
        head_dim = shape["hidden_size"] // shape["num_attention_heads"]
        quarter = head_dim // 2 // 4  # mrope sections (t, h, w) split head_dim/2 like the real 16/24/24 of 64
        mrope = [head_dim // 2 - 3 * quarter, quarter + quarter // 2, quarter + quarter - quarter // 2]
        return dict(**common, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                               "mrope_section": mrope})
    return Qwen2Config(**common, tie_word_embeddings=True)


def build_tiny(family: str, out_dir: str | Path, size: str = "tiny") -> Path:
    """Build a seeded random checkpoint of `family` at `size` and save it as a standard HF folder.

    Returns the folder, loadable with `load_mlm(folder)` or the family's transformers classes.
    """
    if size not in SIZES:
        raise ValueError(f"unknown tiny size {size!r}; choose one of {', '.join(SIZES)}.")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(family)
    image_token = "<|image_pad|>" if family == "qwen2_5_vl" else "<image>"
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    vshape = VISION_SHAPES[size]
    torch.manual_seed(SEED)

    if family == "llava_onevision":
        vision = SiglipVisionConfig(image_size=32, patch_size=8, **vshape)
        config = LlavaOnevisionConfig(
            text_config=_text_config(family, size, tokenizer).to_dict(), vision_config=vision.to_dict(),
            image_token_index=image_token_id, video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]], vision_feature_layer=-1,
            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=True,
        )
        model = LlavaOnevisionForConditionalGeneration(config)
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": 32, "width": 32}, image_grid_pinpoints=config.image_grid_pinpoints, do_pad=True,
        )
        processor = ImageOnlyLlavaOnevisionProcessor(
            image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=(32 // 8) ** 2,
            vision_feature_select_strategy="full", chat_template=CHATML_LLAVA_OV,
        )
    elif family == "llava_next":
        vision = CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=vshape["hidden_size"], **vshape)
        config = LlavaNextConfig(
            text_config=_text_config(family, size, tokenizer).to_dict(), vision_config=vision.to_dict(),
            image_token_index=image_token_id, image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
            vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
        )
        model = LlavaNextForConditionalGeneration(config)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_grid_pinpoints=config.image_grid_pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tokenizer, patch_size=8, num_additional_image_tokens=1,
            vision_feature_select_strategy="default", chat_template=LLAMA3_LLAVA_NEXT,
        )
    elif family == "qwen2_5_vl":
        text = _text_config(family, size, tokenizer)
        vision = dict(depth=vshape["num_hidden_layers"], hidden_size=vshape["hidden_size"],
                      intermediate_size=vshape["intermediate_size"], num_heads=vshape["num_attention_heads"],
                      out_hidden_size=LM_SHAPES[size]["hidden_size"], patch_size=4, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=16, fullatt_block_indexes=[vshape["num_hidden_layers"] - 1])
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, image_token_id=image_token_id,
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"), tie_word_embeddings=True,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=4, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
        )
        processor = ImageOnlyQwen2_5_VLProcessor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=CHATML_QWEN2_5_VL,
        )
    else:
        raise UnsupportedModelError(
            f"no tiny checkpoint for family {family!r}; choose one of llava_onevision, qwen2_5_vl, llava_next."
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return apply_default_modes(out_dir)  # save_pretrained writes model.safetensors 0600


def tiny_cache_dir() -> Path:
    """Where built tiny checkpoints are kept (VKVTRAIN_CACHE or ~/.cache/vkvtrain)."""
    root = os.environ.get("VKVTRAIN_CACHE") or Path.home() / ".cache" / "vkvtrain"
    return Path(root) / "tiny"


def _cache_key(family: str, size: str) -> str:
    versions = f"{family}-{size}-{BUILD_VERSION}-{transformers.__version__}-{torch.__version__}"
    return f"{family}-{size}-{hashlib.sha1(versions.encode()).hexdigest()[:10]}"


def ensure_tiny(family: str, size: str = "tiny") -> Path:
    """The cached folder of a tiny checkpoint, built on first use (atomically, so concurrent users are safe)."""
    target = tiny_cache_dir() / _cache_key(family, size)
    if (target / "vkvtrain_tiny.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, prefix=f".{family}-")  # the usual folder mode, not mkdtemp's 0700
    try:
        build_tiny(family, staging, size=size)
        (staging / "vkvtrain_tiny.json").write_text(json.dumps({"family": family, "size": size, "seed": SEED}))
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its folder is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def parse_tiny(name: str) -> tuple[str, str]:
    """`tiny://family[@size]` -> (family, size)."""
    spec = name[len(TINY_SCHEME):]
    family, _, size = spec.partition("@")
    return family, size or "tiny"
