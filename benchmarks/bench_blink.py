"""BLINK evaluation speed: questions/s of the default protocol (``evaluate``'s defaults: lmms-eval's greedy
generation, batch 8, latent probes on) against the one-question-at-a-time ``generate`` loop lmms-eval runs
(batch 1), on the same model, for the tiny and the ~30M-parameter (tiny://...@mid) checkpoints of one family,
measured in one run on the synthetic BLINK set. Also: the default protocol without probes, and likelihood
scoring (an option).

    python benchmarks/bench_blink.py [--family llava_onevision] [--max-new-tokens 8] [--threads 1]

Every case decodes the same ``--max-new-tokens`` (the random checkpoints never end their turn, so the default
budget of 1024 would time 1024 tokens per question). Each case is timed in ``repeats`` interleaved rounds and its
fastest run is kept (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402

from vkvtrain import load_mlm  # noqa: E402
from vkvtrain.data.synthetic_blink import synthetic_blink_questions  # noqa: E402
from vkvtrain.evaluation.blink import evaluate_blink  # noqa: E402
from vkvtrain.evaluation.config import EvalConfig, ProbeConfig  # noqa: E402
from vkvtrain.evaluation.scoring import generate_answers  # noqa: E402


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(model: str, n: int, max_new_tokens: int, repeats: int) -> None:
    mlm = load_mlm(model)
    default = EvalConfig(max_new_tokens=max_new_tokens)
    resolution = default.resolution.apply(mlm)
    params = sum(p.numel() for p in mlm.model.parameters())
    qs = synthetic_blink_questions(n, seed=0, image_size=64)

    def loop() -> None:  # lmms-eval's loop: one question at a time, greedy generation
        for q in qs:
            generate_answers(mlm, [q], default.prompt, max_new_tokens)

    def evaluate(cfg: EvalConfig) -> Callable[[], object]:
        return lambda: evaluate_blink(mlm, qs, cfg, progress=False)

    cases = [
        ("generate loop, batch 1 (lmms-eval, baseline)", loop),
        (f"default protocol (batch {default.batch_size}, probes)", evaluate(default)),
        ("default protocol, no probes", evaluate(EvalConfig(max_new_tokens=max_new_tokens,
                                                              probes=ProbeConfig(enabled=False)))),
        (f"likelihood letter (option), batch {default.batch_size}", evaluate(EvalConfig(mode="likelihood"))),
    ]
    evaluate(EvalConfig(mode="likelihood"))()  # warm-up (allocator, lazy inits)
    print(f"\n{model}: {params / 1e6:.2f}M parameters, {len(qs)} synthetic questions (14 subtasks), "
          f"max_new_tokens={max_new_tokens}, resolution {resolution}, {torch.get_num_threads()} threads, "
          f"best of {repeats}")
    best = [float("inf")] * len(cases)
    for _ in range(repeats):  # rounds over all cases, so a busy spell on a shared CPU hits every case alike
        for k, (_name, fn) in enumerate(cases):
            best[k] = min(best[k], _timed(fn))
    base = len(qs) / best[0]
    for (name, _fn), seconds in zip(cases, best):
        qps = len(qs) / seconds
        print(f"  {name:<48} {qps:8.2f} questions/s   x{qps / base:5.2f} vs baseline")
    print(f"  default protocol / one-at-a-time generate loop: {best[0] / best[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava_onevision")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    # One thread by default: on a shared 2-core machine, 2-thread OpenMP barriers make small ops 10-20x slower.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # (size, questions per subtask, repeats): the ~30M model is ~40x slower per question on CPU
    for size, n, repeats in (("", 4, 3), ("@mid", 2, 3)):
        bench(f"tiny://{args.family}{size}", n, args.max_new_tokens, repeats)


if __name__ == "__main__":
    main()
