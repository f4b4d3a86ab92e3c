"""Shared fixtures. Nothing in the suite touches the network."""

from __future__ import annotations

import os

# Forced, not defaulted: a user's environment must not turn the network back on for the suite.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vkvtrain import MLM, load_mlm  # noqa: E402
from vkvtrain.models.registry import families  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_mlm() -> Callable[[str], MLM]:
    """Factory: tiny_mlm("qwen2_5_vl") -> a freshly loaded tiny MLM (eval mode, float32)."""

    def load(family: str, **kwargs) -> MLM:
        return load_mlm(f"tiny://{family}", **kwargs)

    return load


@pytest.fixture(params=families())
def family(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over the three supported families."""
    return request.param


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A seeded random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def make_image() -> Callable[..., Image.Image]:
    return random_image
