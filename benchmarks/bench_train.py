"""Training-step cost of vkvtrain's interventions against a plain LoRA step, measured in one run.

Model: tiny://llava_onevision@mid (~30M-parameter random model of the real class), CPU or GPU.
baseline : LoRA (rank 8, q/k/v/o of every LM layer), answer-token LM loss (VKVModule's answer_forward:
           the LM head runs over the answer window only), backward, AdamW step.
vkvtrain : the same LoRA + a learned 8-vector prefix before the image + the key-artifact loss on the last
           two layers (keys captured with gradients) + probe capture of values/keys of every layer.
The steps alternate (so drift and contention hit all alike); ratios of medians are printed, with a
"LoRA + prefix" arm that splits the cost into the prefix's extra tokens and vkvtrain's loss + capture.
Target (DESIGN.md): <= 1.10x.

    python benchmarks/bench_train.py [--steps 20] [--batch 4] [--model tiny://llava_onevision@mid] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vkvtrain import Prompt, load_mlm  # noqa: E402
from vkvtrain.interventions import KeyArtifactSuppression, LateLoRA, LearnedPrefix  # noqa: E402
from vkvtrain.answer_loss import answer_forward  # noqa: E402


def _images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _setup(model: str, arm: str, batch: int, size: int, device: str):  # type: ignore[no-untyped-def]
    mlm = load_mlm(model)
    mlm.model.requires_grad_(False)
    interventions = [LateLoRA(layers=list(range(mlm.num_layers)), rank=8)]
    if arm in ("prefix", "vkvtrain"):
        interventions.append(LearnedPrefix(num_tokens=8))
    if arm == "vkvtrain":
        interventions.append(KeyArtifactSuppression(layers=[-2, -1]))
    for iv in interventions:
        iv.attach(mlm)
    mlm.model.to(device).train()
    for iv in interventions:
        iv.to(device)
    prefix = "".join(p for iv in interventions if (p := iv.prompt_prefix())) or None
    prompts = [Prompt(images=[img], text="What is in the image?", prefix=prefix, answer="A cat.")
               for img in _images(batch, size)]
    encoded = mlm.encode(prompts).to(device)
    params = [p for iv in interventions for p in (*iv.parameters(), *iv.extra_trainable_parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    return mlm, interventions, encoded, optimizer


def _step(mlm, interventions, batch, optimizer, with_vkv: bool) -> None:  # type: ignore[no-untyped-def]
    optimizer.zero_grad(set_to_none=True)
    if with_vkv:
        grad_layers = sorted({layer for iv in interventions for layer in iv.grad_layers()})
        probe_layers = [layer for layer in range(mlm.num_layers) if layer not in grad_layers]
        # one capture with gradients for the loss layers, one detached for the probes (as in VKVModule)
        with mlm.capture(grad_layers, grad=True) as kv, mlm.capture(probe_layers) as probes:
            loss = answer_forward(mlm.model, batch.inputs).loss
        loss = loss + sum(l for iv in interventions if (l := iv.loss(kv, batch)) is not None)
        _ = [probes.image(layer, 0, 0).values for layer in probes.layers]
    else:
        loss = answer_forward(mlm.model, batch.inputs).loss
    loss.backward()
    optimizer.step()
    if batch.inputs["input_ids"].is_cuda:
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny://llava_onevision@mid")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (one: steadier timings on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = {name: _setup(args.model, name, args.batch, args.size, args.device)
            for name in ("baseline", "prefix", "vkvtrain")}
    mlm = runs["baseline"][0]
    n_params = sum(p.numel() for p in mlm.model.parameters())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.steps + 3):
        for name, (m, ivs, batch, opt) in runs.items():
            start = time.perf_counter()
            _step(m, ivs, batch, opt, name == "vkvtrain")
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - start)
    base, ours = statistics.median(times["baseline"]), statistics.median(times["vkvtrain"])
    prefix_only = statistics.median(times["prefix"])
    seq = {name: int(r[2].inputs["input_ids"].shape[1]) for name, r in runs.items()}
    print(f"model {args.model} ({n_params / 1e6:.1f}M params) on {args.device}, batch {args.batch}, "
          f"sequence {seq['baseline']} (+{seq['vkvtrain'] - seq['baseline']} prefix tokens), {args.steps} steps each, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"plain LoRA step                      : {base * 1e3:8.1f} ms (median)")
    print(f"LoRA + prefix (no loss, no capture)  : {prefix_only * 1e3:8.1f} ms (median)")
    print(f"LoRA + prefix + key loss + capture   : {ours * 1e3:8.1f} ms (median)")
    print(f"ratio: {ours / base:.3f}x (target <= 1.10x); of which the prefix's extra tokens "
          f"{prefix_only / base:.3f}x and key loss + capture {ours / prefix_only:.3f}x")


if __name__ == "__main__":
    main()
