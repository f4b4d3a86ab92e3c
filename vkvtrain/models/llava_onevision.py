"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP + projector + Qwen2 LM.

Image span layout (transformers `pack_image_features`): the base-resolution grid (image_size/patch_size)^2 comes
first, row-major; for a single-image prompt the unpadded anyres crops with newline tokens follow, for
multi-image prompts only one newline token follows.

Published sizes (``tiny://llava_onevision@0.5b`` / ``@7b``) and where each value comes from:

| value | 0.5b | 7b | source |
|---|---|---|---|
| hub id | llava-hf/llava-onevision-qwen2-0.5b-ov-hf | llava-hf/llava-onevision-qwen2-7b-ov-hf | |
| LM | Qwen2-0.5B-Instruct | Qwen2-7B-Instruct | [C] text_model_id |
| hidden / MLP width | 896 / 4864 | 3584 / 18944 | [Q] |
| layers, heads, KV heads (head_dim) | 24, 14, 2 (64) | 28, 28, 4 (128) | [Q] |
| vocab_size | 152000 | 152128 | derived from [C]: [Q]'s 151936 / 152064 + 2 added tokens, padded to a multiple of 64 |
| tied embeddings | yes | no | [Q] |
| rope_theta, rms_norm_eps, max positions | 1e6, 1e-6, 32768 | 1e6, 1e-6, 32768 | [Q] |
| SigLIP: width, MLP, layers, heads | 1152, 4304, 26, 16 | same | [C] (so400m with its last layer and head dropped) |
| SigLIP: image / patch (grid) | 384 / 14 (27 x 27 = 729 tokens) | same | [C] |
| pinpoints, aspect ratio | 36 (384..2304 step 384, 6 x 6), anyres_max_9 | same | [D] |
| feature layer, strategy, projector | -1, full, 2-layer GELU MLP with bias | same | [C], [D] |
| special token ids | <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, <image> 151646, <video> 151647 | same | [D], Qwen2 tokenizer |
| image processor | 384 x 384, mean = std = 0.5, bicubic, pad, same pinpoints | same | [C] loads it from google/siglip-so400m-patch14-384 |

[C] transformers' `convert_llava_onevision_weights_to_hf.py` (the script that wrote the -hf checkpoints);
[Q] Qwen/Qwen2-0.5B-Instruct and Qwen/Qwen2-7B-Instruct config.json; [D] `LlavaOnevisionConfig` defaults, which
transformers documents as llava-hf/llava-onevision-qwen2-7b-ov-hf. Not checked against the -hf config.json files
themselves (no hub access here): max_position_embeddings (32768 in the Instruct configs as recalled, and unused by
the rotary and memory maths) and the padded vocab sizes are the least certain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Config,
    SiglipVisionConfig,
)

from vkvtrain.models.anyres import AnyresAdapter
from vkvtrain.models.base import PublishedSize
from vkvtrain.models.processors import ImageOnlyLlavaOnevisionProcessor
from vkvtrain.models.tiny_parts import (
    RandomShape,
    build_tokenizer,
    lm_config_kwargs,
    token_id,
)

#: ChatML as LLaVA-OneVision publishes it: every image of a turn is rendered before its text, so a prefix
#: before the image has to be placed by vkvtrain (see vkvtrain/prompts.py).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
#: the published ids of SPECIAL_TOKENS (Qwen2 tokenizer + the two tokens the conversion added)
PUBLISHED_TOKEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646,
                       "<video>": 151647}
#: 6 x 6 anyres grid of 384 px crops
PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
#: SigLIP so400m/14 at 384 px as LLaVA-OneVision uses it: 26 of its 27 layers, no pooling head
SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, image_size=384,
              patch_size=14, vision_use_head=False)
SIGLIP_PROCESSOR = dict(size={"height": 384, "width": 384}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                        image_grid_pinpoints=PINPOINTS, do_pad=True)
_QWEN2 = dict(rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768, bos_token_id=151643,
              eos_token_id=151645, pad_token_id=151643)
_TOP = dict(image_token_index=151646, video_token_index=151647, image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
            projector_hidden_act="gelu", multimodal_projector_bias=True)

PUBLISHED: dict[str, PublishedSize] = {
    "0.5b": PublishedSize(
        hub_id="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=152000, tie_word_embeddings=True, **_QWEN2),
        vision=SIGLIP, model=dict(_TOP, tie_word_embeddings=True), processor=SIGLIP_PROCESSOR,
        special_tokens=PUBLISHED_TOKEN_IDS,
    ),
    "7b": PublishedSize(
        hub_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152128, tie_word_embeddings=False, **_QWEN2),
        vision=SIGLIP, model=dict(_TOP, tie_word_embeddings=False), processor=SIGLIP_PROCESSOR,
        special_tokens=PUBLISHED_TOKEN_IDS,
    ),
}


def tokenizer(ids: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """The byte-level stand-in for the Qwen2 tokenizer, with LLaVA-OneVision's special tokens (at ``ids``
    when given: a published checkpoint's ids)."""
    return build_tokenizer(SPECIAL_TOKENS, pad="<|endoftext|>", eos="<|im_end|>", ids=ids)


def text_config(size: str | Mapping[str, Any], tok: PreTrainedTokenizerFast) -> Qwen2Config:
    """The Qwen2 LM config of a tiny checkpoint at ``size`` (a tiny size or an LM shape)."""
    return Qwen2Config(**lm_config_kwargs(size, tok), tie_word_embeddings=True)


def build_processor(image_processor: LlavaOnevisionImageProcessorPil, tok: PreTrainedTokenizerFast,
                    base_tokens: int) -> ImageOnlyLlavaOnevisionProcessor:
    """The family's processor: ``base_tokens`` = (image_size / patch_size)^2 tokens per crop."""
    return ImageOnlyLlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=base_tokens,
        vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
    )


class LlavaOnevisionAdapter(AnyresAdapter):
    family: ClassVar[str] = "llava_onevision"
    model_type: ClassVar[str] = "llava_onevision"
    model_class_name: ClassVar[str] = "LlavaOnevisionForConditionalGeneration"
    processor_class: ClassVar[type[ProcessorMixin]] = ImageOnlyLlavaOnevisionProcessor
    image_placeholder: ClassVar[str] = "<image>"
    turn_end: ClassVar[str] = "<|im_end|>"
    published_sizes: ClassVar[Mapping[str, PublishedSize]] = PUBLISHED

    def resolution(self, processor: Any) -> dict[str, Any]:
        settings = super().resolution(processor)
        settings["images"] = (f"single image: {processor.vision_aspect_ratio}; multi-image prompts: each image "
                              "padded to a square with the image mean, base crop only")
        return settings

    def crops_per_image(self, model: nn.Module, inputs: dict[str, Any]) -> list[int]:
        # Multi-image prompts use only the base crop of each image (transformers `get_image_features`).
        crops = super().crops_per_image(model, inputs)
        per_prompt = inputs.get("batch_num_images")
        if per_prompt is None:
            return crops
        single = [int(n) == 1 for n in per_prompt for _ in range(int(n))]
        return [c if keep else 1 for c, keep in zip(crops, single)]

    def build_tiny(self, size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
        """SigLIP 32 px / 8 px patches (a 4 x 4 base grid), anyres pinpoints up to 64 x 64, Qwen2 LM."""
        return self.build_random(RandomShape.of_size(size))

    def build_random(self, shape: RandomShape) -> tuple[PreTrainedModel, ProcessorMixin]:
        tok = shape.tokenizer(tokenizer())
        side, pinpoints = shape.image_size, shape.grid_pinpoints()
        vision = SiglipVisionConfig(image_size=side, patch_size=8, **shape.vision)
        config = LlavaOnevisionConfig(
            text_config=text_config(shape.lm, tok).to_dict(), vision_config=vision.to_dict(),
            image_token_index=token_id(tok, "<image>"),
            video_token_index=token_id(tok, "<video>"),
            image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", tie_word_embeddings=True,
        )
        model = LlavaOnevisionForConditionalGeneration(config)
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": side, "width": side}, image_grid_pinpoints=pinpoints, do_pad=True,
        )
        return model, build_processor(image_processor, tok, base_tokens=(side // 8) ** 2)

    def build_published(self, size: str) -> tuple[PretrainedConfig, ProcessorMixin]:
        spec = self.published(size)
        config = LlavaOnevisionConfig(
            text_config=Qwen2Config(**spec.text).to_dict(), vision_config=SiglipVisionConfig(**spec.vision).to_dict(),
            **spec.model,
        )
        grid = spec.vision["image_size"] // spec.vision["patch_size"]
        image_processor = LlavaOnevisionImageProcessorPil(**spec.processor)
        return config, build_processor(image_processor, tokenizer(dict(spec.special_tokens)), base_tokens=grid * grid)

