"""Latent probes through real tiny models, on questions whose answer is planted in the value tokens.

At layer 0 a value token is v_proj(norm(input embedding)): it depends on its own image patch only (RoPE
touches keys, not values). So an image repeated verbatim gives identical layer-0 value tokens, and the probe
must pick the repeated image / the repeated location, and must miss when the gold label is moved elsewhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_blink import one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain.data.blink import BlinkQuestion
from vkvtrain.evaluation.latent import probe_correct_batch, probe_correct_from_capture, probe_kind
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.evaluation.scoring import prompts_for


def _img(seed: int, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _questions() -> list[BlinkQuestion]:
    ref = _img(1)
    pooled = BlinkQuestion(
        idx="val_Visual_Similarity_1", sub_task="Visual_Similarity", question="q", prompt="q",
        choices=["the second image", "the third image"], images=[ref, _img(2), ref.copy()], answer="B",
    )
    cells = {"A": (0.1, 0.1), "B": (0.9, 0.1), "C": (0.3, 0.6), "D": (0.9, 0.9)}  # C = REF's location
    point = BlinkQuestion(
        idx="val_Visual_Correspondence_1", sub_task="Visual_Correspondence", question="q", prompt="q",
        choices=[f"Point {c}" for c in "ABCD"], images=[_img(3), _img(3)], answer="C",
        points={"image_1": {"REF": (0.3, 0.6)}, "image_2": cells},
    )
    return [pooled, point]


def test_probes_find_planted_answers_at_layer_zero(tiny_mlm, family) -> None:
    mlm = tiny_mlm(family)
    qs = _questions()
    assert [probe_kind(q) for q in qs] == ["pooled", "point"]
    moved = [dataclasses.replace(qs[0], answer="A"), dataclasses.replace(qs[1], answer="A")]
    batch = mlm.encode(prompts_for(qs, PromptProtocol()))
    layers = [0, mlm.num_layers - 1]
    with torch.no_grad(), mlm.capture(layers) as kv:
        cache = mlm.model(**batch.inputs, use_cache=True).past_key_values
    right = probe_correct_batch(qs, batch.spans, cache, layers)
    wrong = probe_correct_batch(moved, batch.spans, cache, layers)
    assert [bool(r[0]) for r in right] == [True, True]
    assert [bool(r[0]) for r in wrong] == [False, False]
    # the capture-based entry (training-time validation) reads the same tokens, so it answers the same
    for a, b in zip(probe_correct_from_capture(qs, kv), right):
        assert torch.equal(a, b)


def test_no_probe_without_points_or_matching_images() -> None:
    qs = _questions()
    assert probe_kind(dataclasses.replace(qs[1], points=None)) is None  # hub data: points only in pixels
    assert probe_kind(dataclasses.replace(qs[0], images=qs[0].images[:2])) is None
    assert probe_kind(dataclasses.replace(qs[0], sub_task="Counting")) is None


def test_hub_loader_passes_config_split_and_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from vkvtrain.data.blink import load_blink
    from vkvtrain.data.synthetic_blink import synthetic_blink
    from vkvtrain.errors import DatasetError

    fake = synthetic_blink(2, seed=0, subtasks=["Counting", "Jigsaw"])
    calls = []

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        if split != "val":
            raise ValueError(f'Unknown split "{split}". Should be one of [\'val\'].')
        return fake[name]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    qs = load_blink(["Jigsaw", "Counting"], "val", revision="abc123", limit=1)
    assert [q.sub_task for q in qs] == ["Jigsaw", "Counting"]
    assert calls == [("BLINK-Benchmark/BLINK", "Jigsaw", "val", "abc123"), ("BLINK-Benchmark/BLINK", "Counting", "val", "abc123")]
    with pytest.raises(DatasetError, match="no split 'test'"):
        load_blink(["Jigsaw"], "test")
    monkeypatch.setitem(fake, "Jigsaw", fake["Jigsaw"].remove_columns(["choices"]))
    with pytest.raises(DatasetError, match=r"BLINK-Benchmark/BLINK/Jigsaw \(val\) lacks BLINK field\(s\) \['choices'\]"):
        load_blink(["Jigsaw"], "val")
