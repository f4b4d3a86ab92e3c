"""One folder per training run: ``<trainer.default_root_dir>/<YYYYmmdd-HHMMSS>[-N]/`` holds the run's config,
checkpoints, peft adapters and W&B files, so nothing a previous run wrote is replaced and concurrent runs in one
root never share a folder (the name is reserved with an atomic ``mkdir``).

DDP processes started by Lightning's launcher re-run the command; they inherit the folder their rank-0 parent
reserved through ``VKVTRAIN_RUN_DIR``. Under SLURM the folder is ``slurm-<job id>`` and is reused when the job is
requeued, so Lightning's ``hpc`` checkpoint of the same job resumes.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from vkvtrain.errors import OutputError
from vkvtrain.outputs import check_writable_dir, make_dirs

RUN_DIR_ENV = "VKVTRAIN_RUN_DIR"


def reserve_run_dir(root: str | Path) -> Path:
    """Create and return a folder under ``root`` that no other run uses."""
    base = make_dirs(check_writable_dir(root, "trainer.default_root_dir"), "trainer.default_root_dir")
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        return make_dirs(base / f"slurm-{job}", "the run folder")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count():
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise OutputError(f"cannot create the run folder {str(candidate)!r} ({error.strerror}); choose a "
                              "writable trainer.default_root_dir.") from None
    raise AssertionError("unreachable")


def run_dir_for_this_process(root: str | Path) -> Path:
    """The run folder of this process: the inherited one in a DDP child, else a newly reserved one (exported
    for the children Lightning will launch)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)
    run = reserve_run_dir(root)
    os.environ[RUN_DIR_ENV] = str(run)
    return run


def latest_checkpoint(root: str | Path, name: str = "last.ckpt") -> Path | None:
    """The newest ``<root>/<run>/checkpoints/<name>`` (what ``--ckpt_path last`` resumes), or None."""
    found = [p for p in Path(root).expanduser().glob(f"*/checkpoints/{name}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
