"""Probe-suite time per image beside the plain forward time per image, measured in one run.

For the tiny model and the ~30M-parameter "mid" size of one family (``tiny://<family>@mid``), on the
synthetic data of every task: a plain forward per image (same one-image prompts, no capture), the feature
extraction per image (forward with capture of every layer, input embeddings and vision features), and the whole
suite per image (extraction + all probe metrics). Prints seconds per image and the ratios.

    python benchmarks/bench_probes.py [--family llava_onevision] [--device cpu] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402

from vkvtrain import Prompt, load_mlm  # noqa: E402
from vkvtrain.probes.config import DataSpec, ProbeConfig  # noqa: E402
from vkvtrain.probes.suite import ProbeSuite, make_dataset  # noqa: E402


def images_of(task: str, item) -> list:
    """Every image one item of ``task`` feeds to the model."""
    if task == "fewshot":
        return [s.image for s in item.support] + [item.query.image]
    if task == "coseg":
        return [s.image for s in item.samples]
    if task == "keypoints":
        return [item.source, item.target]
    if task == "temporal":
        return list(item.frames)
    return [item.image]


def bench(spec: str, device: str, repeats: int) -> dict[str, float]:
    cfg = ProbeConfig(progress=False, device=device, data={"fewshot": DataSpec(n=3), "coseg": DataSpec(n=2),
                                                          "temporal": DataSpec(n=1, options={"frames": 4})})
    mlm = load_mlm(spec)
    mlm.model.to(device)
    n_params = sum(p.numel() for p in mlm.model.parameters())
    images = []
    for task in cfg.tasks:
        ds = make_dataset(task, cfg)
        if task == "key_agnosticism":
            images += [ds[i].image for i in range(min(len(ds), cfg.probe.key_images))]
        else:
            images += [im for i in range(len(ds)) for im in images_of(task, ds[i])]
    n = len(images)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain() -> None:
        with torch.no_grad():
            for s in range(0, n, cfg.batch_size):
                batch = mlm.encode([Prompt(images=[im]) for im in images[s:s + cfg.batch_size]]).to(mlm.device)
                mlm.model(**batch.inputs)

    suite = ProbeSuite(mlm, cfg)

    def extract() -> None:
        suite.fx(images)

    def full() -> None:
        suite.run()

    fns = {"forward": plain, "extract": extract, "suite": full}
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):  # interleaved rounds, so load from other processes hits all three alike
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    timings: dict[str, float] = {name: t / n for name, t in best.items()}
    timings["params_M"] = n_params / 1e6
    timings["images"] = n
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava_onevision")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (one: steadier timings on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device={args.device} family={args.family} (best of {args.repeats}, {torch.get_num_threads()} CPU "
          "threads; suite = all 7 probe tasks, every layer + input_embeds + vision rows)")
    print(f"{'model':<28}{'params':>9}{'images':>8}{'fwd ms/img':>12}{'extract ms/img':>16}{'suite ms/img':>14}"
          f"{'extract/fwd':>13}{'suite/fwd':>11}")
    for spec in (f"tiny://{args.family}", f"tiny://{args.family}@mid"):
        t = bench(spec, args.device, args.repeats)
        print(f"{spec:<28}{t['params_M']:>8.1f}M{int(t['images']):>8}{1e3 * t['forward']:>12.2f}"
              f"{1e3 * t['extract']:>16.2f}{1e3 * t['suite']:>14.2f}{t['extract'] / t['forward']:>13.2f}"
              f"{t['suite'] / t['forward']:>11.2f}")


if __name__ == "__main__":
    main()
