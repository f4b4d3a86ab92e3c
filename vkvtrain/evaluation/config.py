"""Typed configuration of ``python -m vkvtrain evaluate`` (eval/blink.yaml documents every key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vkvtrain.data.blink import BLINK_HUB_ID
from vkvtrain.evaluation.blink import ProbeOptions
from vkvtrain.evaluation.protocol import PromptProtocol


@dataclass
class DataConfig:
    """Where the BLINK questions come from.

    source: "hub" (datasets.load_dataset(hub_id, subtask, split, revision)), "local" (``root``: one folder per
        subtask with parquet files or save_to_disk output) or "synthetic" (generated in memory,
        ``synthetic_n`` questions per subtask). Setting ``root`` implies "local".
    subtasks: subtask names to evaluate (None = all 14). limit: at most this many questions per subtask.
    """

    source: Literal["hub", "local", "synthetic"] = "hub"
    root: str | None = None
    hub_id: str = BLINK_HUB_ID
    revision: str | None = None
    split: str = "val"
    subtasks: list[str] | None = None
    limit: int | None = None
    synthetic_n: int = 4
    synthetic_seed: int = 0
    synthetic_image_size: int = 64


@dataclass
class WandbConfig:
    """W&B logging: set ``project`` to log the tables (mode "offline" needs no network)."""

    project: str | None = None
    name: str | None = None
    mode: Literal["online", "offline", "disabled"] = "offline"
    save_dir: str | None = None


@dataclass
class EvalConfig:
    """One BLINK evaluation run.

    model: hub id, local HF folder or tiny://<family>[@mid]; None with ``ckpt_path`` = the model the checkpoint
    was trained on. ckpt_path: a vkvtrain training checkpoint whose interventions are applied to the model
    before evaluating (vkvtrain.checkpointing.restore_into).
    dtype: "bfloat16" | "float16" | "float32" | None. device: "cpu", "cuda", "cuda:1"... (None: cuda when
    available). mode: "likelihood" (choice scoring from one cached prefill) or "generate".
    interventions: untrained interventions applied for this evaluation, in the recipes' format
    (``{class_path, init_args}``), after a checkpoint's own; e.g. attention blocking of artifact keys. Those
    that choose positions from data calibrate on the images of the first ``calibration_questions`` questions
    (answers unused).
    """

    model: str | None = None
    ckpt_path: str | None = None
    dtype: str | None = None
    device: str | None = None
    mode: Literal["likelihood", "generate"] = "likelihood"
    batch_size: int = 8
    max_new_tokens: int = 16
    interventions: list[dict[str, Any]] = field(default_factory=list)
    calibration_questions: int = 16
    output_dir: str = "outputs/blink"
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptProtocol = field(default_factory=PromptProtocol)
    probes: ProbeOptions = field(default_factory=ProbeOptions)
    wandb: WandbConfig = field(default_factory=WandbConfig)
