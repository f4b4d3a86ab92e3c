"""A fourth family really is one adapter file + one registry line: every path runs on it unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fourth_family import LlavaAdapter
from test_capture import assert_planted_grids_and_exact_kv

from vkvtrain import Prompt, load_mlm
from vkvtrain.interventions import LateLoRA, LearnedPrefix
from vkvtrain.models import registry
from vkvtrain.models.quantization import Quantization


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "ADAPTERS", dict(registry.ADAPTERS))
    registry.register(LlavaAdapter)  # the one registry line
    yield


def test_unregistered_family_is_refused_with_the_list() -> None:
    with pytest.raises(Exception, match="unknown tiny checkpoint 'tiny://llava'.*tiny://llava_onevision"):
        load_mlm("tiny://llava")


def test_fourth_family_tiny_load_capture_lora_prefix(registered: None, make_image) -> None:  # type: ignore[no-untyped-def]
    mlm = load_mlm("tiny://llava")
    assert type(mlm.model).__name__ == "LlavaForConditionalGeneration" and mlm.family == "llava"
    batch = mlm.encode([Prompt([make_image(32, 32, 1)], "Q?"), Prompt([make_image(40, 24, 2)], "Which one?")])
    assert [span.grid_shape for row in batch.spans for span in row] == [(4, 4), (4, 4)]
    assert_planted_grids_and_exact_kv(mlm, batch)  # capture == transformers' own cache, exactly

    with torch.no_grad(), mlm.capture([0], vision_features=True) as kv:
        mlm.model(**batch.inputs)
    assert kv.vision(0, 0).values.shape[0] == 16

    lora = LateLoRA(layers=[-1], rank=2)
    mlm.model.requires_grad_(False)
    lora.attach(mlm)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in mlm.model.named_modules() if n.endswith("lora_A")}
    assert wrapped and all(".language_model.layers.3.self_attn." in n for n in wrapped)  # never the CLIP layers

    prefix = LearnedPrefix(num_tokens=2)
    prefix.attach(mlm)
    prompt = Prompt([make_image(32, 32, 1)], "Q?", prefix=prefix.prompt_prefix(), answer="yes")
    loss = mlm.model(**mlm.encode([prompt]).inputs).loss
    loss.backward()
    assert prefix.vectors.grad is not None and prefix.vectors.grad.abs().sum() > 0


def test_fourth_family_quantization_skips_its_own_vision_modules(registered: None) -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional extra (vkvtrain[quant])")
    config = Quantization(bits=8).to_bnb_config(LlavaAdapter.vision_modules)
    assert config.llm_int8_skip_modules == ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
