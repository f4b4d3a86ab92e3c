"""`make demo`: the tiny learned-prefix recipe end to end on CPU, with probe and surfacing-gap metrics
before and after training and the offline W&B run that holds them.

    python -m vkvtrain.demo [--steps N] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "prefix.yaml"


def _table(before: dict[str, float], after: dict[str, float]) -> str:
    keys = sorted(k for k in after if k.startswith("val/"))
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  {'before':>8}  {'after':>8}"]
    for key in keys:
        b = before.get(key, float("nan"))
        lines.append(f"{key:<{width}}  {b:8.4f}  {after[key]:8.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps (default 8)")
    parser.add_argument("--out", default="runs/demo", help="output folder (checkpoints, W&B run)")
    args = parser.parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM"):
        os.environ.setdefault(key, "1" if key != "TOKENIZERS_PARALLELISM" else "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    start = time.perf_counter()

    from vkvtrain.training_cli import build_cli
    from vkvtrain.wandb_offline import find_run_file, history

    out = Path(args.out)
    cli = build_cli([
        "fit", str(RECIPE), f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
        f"trainer.default_root_dir={out}", f"trainer.logger.init_args.save_dir={out}",
        "trainer.enable_model_summary=false",
    ], run=False)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    print(f"recipe {RECIPE.name}: {module.model_name}, interventions "
          f"{[type(iv).__name__ for iv in module.interventions]}, {args.steps} steps")
    before = {k: float(v) for k, v in trainer.validate(module, data, verbose=False)[0].items()}
    trainer.fit(module, data)
    after = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    for lg in trainer.loggers:
        lg.finalize("success")
    import wandb

    wandb.finish()

    print("\nprobe metrics per layer (key input-agnosticism), latent-probe accuracy and surfacing gap "
          "(probe right & output wrong) on the synthetic BLINK val split:")
    print(_table(before, after))
    run_file = find_run_file(out)
    rows = history(run_file)
    logged = sorted({k for row in rows for k in row if k.startswith("val/") and "heatmap" not in k})
    print(f"\nW&B offline run: {run_file.parent}")
    print(f"  {len(rows)} history rows, {len(logged)} val metrics (read back from {run_file.name}); "
          f"heatmap images under {run_file.parent / 'files' / 'media'}")
    print(f"  upload later with: wandb sync {run_file.parent}")
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "last_model_path", ""):
        ckpt = Path(callback.last_model_path)
        print(f"checkpoint (prefix vectors + recipe only): {ckpt} ({ckpt.stat().st_size / 1024:.1f} KiB)")
        print(f"  evaluate it on BLINK: python -m vkvtrain evaluate eval/blink.yaml --ckpt_path {ckpt} "
              "--data.source synthetic --max_new_tokens 16")
    print(f"val/loss {before['val/loss']:.4f} -> {after['val/loss']:.4f}; done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
