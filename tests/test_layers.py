"""The one layer-index rule (vkvtrain.layers.resolve_layers) and the places that use it."""

from __future__ import annotations

import pytest

from vkvtrain.errors import CaptureError, LayerError, RecipeError
from vkvtrain.layers import resolve_layers


def test_negative_indices_count_from_the_end_sorted_and_distinct() -> None:
    assert resolve_layers([-1, 0, 3, -4], 4) == [0, 3]
    assert resolve_layers(None, 3) == [0, 1, 2]
    assert resolve_layers([], 3) == []


@pytest.mark.parametrize("bad", [4, 100, -5])
def test_out_of_range_is_refused_naming_index_owner_and_range(bad: int) -> None:
    with pytest.raises(LayerError, match=rf"model.probe_layers: layer {bad} does not exist; the LM has 4 layers"):
        resolve_layers([0, bad], 4, "model.probe_layers")
    # callers that caught the older error kinds still catch it
    assert issubclass(LayerError, CaptureError) and issubclass(LayerError, RecipeError)


def test_probe_feature_extractor_refuses_a_layer_the_model_lacks(tiny_mlm) -> None:  # type: ignore[no-untyped-def]
    from vkvtrain.probes.features import FeatureExtractor

    with pytest.raises(LayerError, match="layer 100 does not exist"):
        FeatureExtractor(tiny_mlm("llava_onevision"), layers=[100])
