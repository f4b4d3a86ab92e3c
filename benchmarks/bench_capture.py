"""Capture overhead: forward with capture of all layers / plain forward, per family, measured in one run.

Model: `tiny://<family>@mid` (~30M parameters, random init, real classes). Batch: 2 prompts x 1 image.
Timing: median over interleaved repeats (plain, capture, plain, capture, ...), so drift hits both alike.
Memory: bytes the capture holds against the payload (image keys + values of every layer); on CUDA also the
peak-allocation increase of the capture forward over the plain forward.
Target (DESIGN.md): overhead <= 1.03x.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from vkvtrain import Prompt, load_mlm
from vkvtrain.models.registry import families

REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))  # one thread: steadier medians on a shared box


def images(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))]


def held_bytes(kv) -> int:
    tensors = list(kv._store.values()) + list(kv._rotary or ())
    return sum(t.numel() * t.element_size() for t in tensors)


def bench(family: str, device: str) -> dict[str, float]:
    mlm = load_mlm(f"tiny://{family}@mid")
    mlm.model.to(device)
    params = sum(p.numel() for p in mlm.model.parameters())
    batch = mlm.encode([Prompt(images(0), "What is in the image?"), Prompt(images(1), "Describe it.")]).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def plain() -> None:
        mlm.model(**batch.inputs)

    def captured() -> None:
        with mlm.capture() as kv:
            mlm.model(**batch.inputs)
        captured.kv = kv  # type: ignore[attr-defined]

    times: dict[str, list[float]] = {"plain": [], "capture": []}
    with torch.inference_mode():
        for _ in range(3):
            plain(), captured()
        for _ in range(REPEATS):
            for name, fn in (("plain", plain), ("capture", captured)):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    kv = captured.kv  # type: ignore[attr-defined]
    n_tokens = kv.tokens("values", 0).shape[0]
    payload = 2 * n_tokens * mlm.kv_dim * mlm.num_layers * kv.tokens("values", 0).element_size()
    result = {
        "params_M": params / 1e6,
        "seq_len": batch.input_ids.shape[1],
        "image_tokens": n_tokens,
        "plain_ms": 1e3 * statistics.median(times["plain"]),
        "capture_ms": 1e3 * statistics.median(times["capture"]),
        "held_over_payload": held_bytes(kv) / payload,
        "payload_kib": payload / 1024,
    }
    result["overhead"] = result["capture_ms"] / result["plain_ms"]
    if device == "cuda":
        with torch.inference_mode():
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            plain()
            peak_plain = torch.cuda.max_memory_allocated() - base
            torch.cuda.reset_peak_memory_stats()
            captured()
            peak_capture = torch.cuda.max_memory_allocated() - base
        result["peak_delta_over_payload"] = (peak_capture - peak_plain) / payload
    return result


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"capture overhead, all layers, image positions only ({device}, {REPEATS} repeats, median)")
    print(f"{'family':16} {'params':>7} {'seq':>4} {'img tok':>7} {'plain ms':>9} {'capture ms':>10} "
          f"{'ratio':>6} {'held/payload':>12}")
    worst = 0.0
    for family in families():
        r = bench(family, device)
        worst = max(worst, r["overhead"])
        extra = f"  peak delta/payload {r['peak_delta_over_payload']:.2f}" if "peak_delta_over_payload" in r else ""
        print(f"{family:16} {r['params_M']:6.1f}M {r['seq_len']:4d} {r['image_tokens']:7d} {r['plain_ms']:9.2f} "
              f"{r['capture_ms']:10.2f} {r['overhead']:5.3f}x {r['held_over_payload']:12.3f}{extra}")
    print(f"worst capture overhead: {worst:.3f}x (target <= 1.03x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
