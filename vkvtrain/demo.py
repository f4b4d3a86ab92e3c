"""``make demo`` (``python -m vkvtrain demo``): the tiny learned-prefix recipe end to end on CPU, with probe and
surfacing-gap metrics before and after training and the offline W&B run that holds them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from vkvtrain.cli import main
from vkvtrain.outcome import Outcome
from vkvtrain.training_cli import build_cli, summarize
from vkvtrain.wandb_offline import find_run_file, history

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "prefix.yaml"


def _table(before: dict[str, float], after: dict[str, float]) -> str:
    keys = sorted(k for k in after if k.startswith("val/"))
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  {'before':>8}  {'after':>8}"]
    for key in keys:
        b = before.get(key, float("nan"))
        lines.append(f"{key:<{width}}  {b:8.4f}  {after[key]:8.4f}")
    return "\n".join(lines)


def demo(steps: int = 8, out: str = "runs/demo") -> Outcome:
    """Train the tiny learned-prefix recipe on CPU and show its metrics before and after training.

    Args:
        steps: training steps.
        out: the root folder; this run writes into its own <out>/<timestamp>/ (checkpoints, W&B run, config).
    """
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("WANDB_MODE", "offline")):
        os.environ.setdefault(key, value)  # the demo needs no network
    start = time.perf_counter()
    cli = build_cli([
        "fit", str(RECIPE), f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
        f"trainer.default_root_dir={out}", "trainer.enable_model_summary=false",
    ], run=False)
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    print(f"recipe {RECIPE.name}: {module.model_name}, interventions "
          f"{[type(iv).__name__ for iv in module.interventions]}, {steps} steps")
    before = {k: float(v) for k, v in trainer.validate(module, data, verbose=False)[0].items()}
    trainer.fit(module, data)
    after = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    outcome = summarize(cli, "fit", str(RECIPE))  # finishes the W&B run, so its file is complete
    assert outcome is not None  # a single process is rank 0

    print("\nprobe metrics per layer (key input-agnosticism), latent-probe accuracy and surfacing gap "
          "(probe right & output wrong) on the synthetic BLINK val split:")
    print(_table(before, after))
    run_file = find_run_file(cli.run_dir)
    rows = history(run_file)
    logged = sorted({k for row in rows for k in row if k.startswith("val/") and "heatmap" not in k})
    outcome.figures = {
        "val/loss": f"{before['val/loss']:.4f} -> {after['val/loss']:.4f}",
        "W&B history": f"{len(rows)} rows, {len(logged)} val metrics (read back from {run_file.name}); heatmap "
                       f"images under {run_file.parent / 'files' / 'media'}",
        "time": f"{time.perf_counter() - start:.0f} s",
    }
    return outcome


if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
