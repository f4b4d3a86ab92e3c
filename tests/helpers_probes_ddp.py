"""Run every probe metric on a fixed set of updates, in one process or split over 2 gloo processes.

Usage: ``python tests/helpers_probes_ddp.py OUT_DIR``; writes ``OUT_DIR/single.pt`` (one process) and
``OUT_DIR/ddp.pt`` (2 forked gloo processes), each ``{metric: compute() dict}``. Forking keeps the imports
of the parent, so the whole comparison pays for one interpreter start.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers_probes import planted_feats, random_box_mask  # noqa: E402

from vkvtrain.probes import (CoSegmentation, FewShotSegmentation, KeyInputAgnosticism,  # noqa: E402
                             KeypointCorrespondence, TemporalCorrespondence, TextGroundedSegmentation)
from vkvtrain.probes import functional as PF  # noqa: E402

GRID, SCALE, L = (6, 6), 4, 2


def _feats(mask: torch.Tensor, seed: int) -> torch.Tensor:
    tok = PF.downsample_mask(mask, GRID) >= 0.5
    return torch.stack([planted_feats(tok, noise=0.6, seed=seed), planted_feats(tok, noise=1.5, seed=seed + 99)])


def build() -> tuple[dict[str, Callable[[], Any]], list[tuple[str, tuple, dict]]]:
    """Metric factories and the ordered list of (metric, args, kwargs) updates."""
    metrics = {
        "fewshot": lambda: FewShotSegmentation(L, num_classes=4),
        "coseg": lambda: CoSegmentation(L, k=3),
        "grounding": lambda: TextGroundedSegmentation(L, num_classes=4),
        "keypoints": lambda: KeypointCorrespondence(L, normalize="image"),
        "temporal": lambda: TemporalCorrespondence(L, topk=3),
        "keys": lambda: KeyInputAgnosticism(L, num_positions=20, dim=6),
    }
    gen = torch.Generator().manual_seed(0)
    updates: list[tuple[str, tuple, dict]] = []
    for e in range(4):
        masks = [random_box_mask(GRID, SCALE, 10 * e + j) for j in range(3)]
        feats = [_feats(m, 10 * e + j) for j, m in enumerate(masks)]
        updates.append(("fewshot", (feats[:2], masks[:2], feats[2], masks[2]), {"class_id": 1 + e % 3}))
        updates.append(("coseg", (feats, masks), {}))
        text = torch.zeros(L, 16)
        text[:, 1] = 1
        updates.append(("grounding", (text, feats[0], masks[0]), {"class_id": e % 4}))
        kps = torch.rand(5, 2, generator=gen) * 24
        updates.append(("keypoints", (feats[0], feats[1], kps, kps, (24, 24), (24, 24)), {}))
        clip = torch.stack([m.long() for m in masks])
        updates.append(("temporal", (feats, clip), {}))
        keys = torch.randn(L, 3, 20, 6, generator=gen)
        keys[1, :, 4] += 30
        updates.append(("keys", (keys,), {}))
    return metrics, updates


def run(rank: int, world: int) -> dict[str, dict[str, torch.Tensor]]:
    factories, updates = build()
    metrics = {name: make() for name, make in factories.items()}
    for i, (name, args, kwargs) in enumerate(updates):
        if i // len(factories) % world == rank:  # round-robin whole episodes over ranks
            metrics[name].update(*args, **kwargs)
    return {name: {k: v.cpu() for k, v in m.compute().items()} for name, m in metrics.items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = run(rank, world)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    torch.save(run(0, 1), out / "single.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(2, port, str(out / "ddp.pt")), nprocs=2, join=True, start_method="fork")


if __name__ == "__main__":
    main()
