"""The full-size model organism: build it, time it, and print its measured ground truth.

    python benchmarks/organism_build.py [--family llava_onevision] [--out DIR] [--seed 0] [--threads 2]

Builds ``organism://<family>`` at size "full" into ``--out`` (default: a fresh temporary folder) with
``vkvtrain.organism.build.build``, which prints the per-stage build time and the ground-truth tables (taught
accuracy, probe deltas and the surfacing gap against the random-init control, key input-agnosticism). The
target is a build of at most 15 minutes on a 2-core CPU; the script exits 1 when a ground-truth criterion
fails. Not part of ``make bench`` (it trains for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vkvtrain.organism.build import MARKER, REPORT, build  # noqa: E402

TARGET_MINUTES = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llava_onevision")
    parser.add_argument("--out", default=None, help="folder to create (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="organism-")) / args.family
    folder = build(args.family, str(out), size="full", seed=args.seed, threads=args.threads)
    marker = json.loads((folder / MARKER).read_text())
    report = json.loads((folder / REPORT).read_text())
    minutes = marker["timings"]["total_s"] / 60
    failed = [name for name, c in report["criteria"].items() if not c["ok"]]
    print(f"\nbuild: {minutes:.1f} min on {marker['threads']} threads (target <= {TARGET_MINUTES:.0f}); "
          f"folder {folder}")
    print("all ground-truth criteria hold" if not failed else f"criteria NOT met: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
