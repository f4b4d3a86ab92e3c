"""Probe-suite datasets drawn from the organism's world, in the schema of :mod:`vkvtrain.data.perception.schema`.

They feed the same metric classes as the synthetic and real loaders (``ProbeSuite.run_on``), but their targets
are concepts the pixels do not give away:

- :class:`WorldFewShot` (task ``fewshot``): the episode's class is a shape kind; every image holds one shape
  of that kind and one of another kind, each in a random colour and texture on a random background, and the
  mask is the episode kind's shape only.
- :class:`WorldKeypointPairs` (task ``keypoints``): two shapes of the same kind differing in colour,
  texture, size, place and background; one keypoint per part, mapped exactly through the object frame.
- :class:`WorldImages` (task ``key_agnosticism``): random scenes.

Each item is deterministic in ``(seed, index)``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vkvtrain.data.perception.schema import FewShotEpisode, KeypointPair, SegSample
from vkvtrain.organism.world import (
    COLOUR_NAMES,
    KINDS,
    PARTS,
    TEXTURES,
    place,
    random_object,
    random_scene,
    render,
)


class _WorldData:
    task = ""
    num_classes = len(KINDS) + 1

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        return np.random.default_rng([self.seed, sum(map(ord, type(self).__name__)), index])


class WorldFewShot(_WorldData):
    """``n`` episodes of ``shots`` supports + 1 query; episode ``i`` segments ``KINDS[i % len(KINDS)]``."""

    task = "fewshot"

    def __init__(self, n: int = 12, shots: int = 5, seed: int = 0) -> None:
        super().__init__(n, seed)
        self.shots = shots

    def _sample(self, rng: np.random.Generator, kind: str, image_id: str) -> SegSample:
        other = str(rng.choice([k for k in KINDS if k != kind]))
        while True:
            colours = rng.choice(COLOUR_NAMES, 2, replace=False)
            objects = [random_object(rng, (22.0, 34.0), k, str(c)) for k, c in zip((kind, other), colours)]
            placed = place(rng, objects)
            if placed is not None:
                break
        scene = render(placed, int(rng.integers(2**31)))
        return SegSample(Image.fromarray(scene.image, "RGB"), torch.from_numpy(scene.mask(0)),
                         KINDS.index(kind) + 1, kind, image_id, text=kind)

    def __getitem__(self, index: int) -> FewShotEpisode:
        rng = self._rng(index)
        kind = KINDS[index % len(KINDS)]
        items = [self._sample(rng, kind, f"ep{index}/{j}") for j in range(self.shots + 1)]
        return FewShotEpisode(items[:-1], items[-1], KINDS.index(kind) + 1, kind)


class WorldKeypointPairs(_WorldData):
    """``n`` pairs of same-kind shapes (other colour, texture, size, place, background) with exact keypoints.

    One keypoint per part: a random interior pixel of the part in the source shape, and the point with the same
    object-frame coordinates in the target shape (its exact semantic correspondent: same kind, same place).
    """

    task = "keypoints"

    def __getitem__(self, index: int) -> KeypointPair:
        rng = self._rng(index)
        kind = KINDS[index % len(KINDS)]
        colours = rng.choice(COLOUR_NAMES, 2, replace=False)
        textures = rng.choice(TEXTURES, 2, replace=False)
        objects = [random_object(rng, (40.0, 58.0), kind, str(c), str(t)) for c, t in zip(colours, textures)]
        scenes = [render([o], int(rng.integers(2**31))) for o in objects]
        src, trg = objects
        source_kps, target_kps = [], []
        for j in range(len(PARTS)):
            part = scenes[0].parts == j + 1
            interior = part.copy()  # pixels whose 3x3 neighbourhood is all this part
            interior[1:-1, 1:-1] = part[:-2, :-2] & part[:-2, 2:] & part[2:, :-2] & part[2:, 2:] & part[1:-1, 1:-1]
            ys, xs = np.nonzero(interior)
            if len(xs) == 0:
                continue
            k = int(rng.integers(len(xs)))
            x, y = xs[k] + 0.5, ys[k] + 0.5
            u, v = (x - src.cx) / (src.size / 2), (y - src.cy) / (src.size / 2)
            source_kps.append([x, y])
            target_kps.append([trg.cx + u * trg.size / 2, trg.cy + v * trg.size / 2])
        size = scenes[0].size

        def box(o: object) -> torch.Tensor:
            return torch.tensor(getattr(o, "box"), dtype=torch.float32).clamp(0, size)

        return KeypointPair(Image.fromarray(scenes[0].image, "RGB"), Image.fromarray(scenes[1].image, "RGB"),
                            torch.tensor(source_kps), torch.tensor(target_kps), box(src), box(trg), kind,
                            f"pair{index}")


class WorldImages(_WorldData):
    """``n`` random scenes (1-4 shapes) as samples whose mask is every object."""

    task = "key_agnosticism"

    def __getitem__(self, index: int) -> SegSample:
        scene = random_scene(self._rng(index))
        return SegSample(Image.fromarray(scene.image, "RGB"), torch.from_numpy(scene.instances > 0), 1, "object",
                         f"scene{index}")
