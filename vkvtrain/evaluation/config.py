"""Typed configuration of ``python -m vkvtrain evaluate`` (eval/blink.yaml documents every key).

One dataclass per section, each validated in ``__post_init__`` so a bad value fails, naming the key, before any
model or data loads. The defaults reproduce lmms-eval's BLINK task (eval/README.md lists where they come from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vkvtrain.data.blink import BLINK_HUB_ID, BLINK_SPLITS, check_subtasks
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.protocol import LMMS_EVAL_PRE_PROMPT, PromptProtocol

# lmms_eval/models/simple/qwen2_5_vl.py (Qwen2_5_VL.__init__; the chat wrapper inherits it): the processor is
# built with min_pixels=256*28*28 and max_pixels=1605632 (= 2048*28*28).
LMMS_EVAL_QWEN2_5_VL_MIN_PIXELS = 256 * 28 * 28
LMMS_EVAL_QWEN2_5_VL_MAX_PIXELS = 1605632
# lmms_eval/tasks/blink/_default_template_yaml: generation_kwargs.max_new_tokens
LMMS_EVAL_MAX_NEW_TOKENS = 1024

STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork")
DTYPES = ("bfloat16", "float16", "float32")


def _positive(value: int | None, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or int(value) < 1:
        raise RecipeError(f"{key} must be an integer >= 1{' or null' if allow_none else ''}, got {value!r}")


@dataclass
class DataConfig:
    """Where the BLINK questions come from.

    source: "hub" (datasets.load_dataset(hub_id, subtask, split, revision)), "local" (``root``: one folder per
        subtask with parquet files or save_to_disk output) or "synthetic" (generated in memory,
        ``synthetic_n`` questions per subtask). Setting ``root`` implies "local".
    subtasks: subtask names to evaluate (None = all 14). limit: at most this many questions per subtask.
    skip_malformed: skip questions whose gold answer is not one of their letters, and subtasks without
        questions, listing each in results.json (``skipped``); off = such data is an error naming it.
    """

    source: Literal["hub", "local", "synthetic"] = "hub"
    root: str | None = None
    hub_id: str = BLINK_HUB_ID
    revision: str | None = None
    split: str = "val"
    subtasks: list[str] | None = None
    limit: int | None = None
    skip_malformed: bool = False
    synthetic_n: int = 4
    synthetic_seed: int = 0
    synthetic_image_size: int = 64

    def __post_init__(self) -> None:
        if self.source not in ("hub", "local", "synthetic"):
            raise RecipeError(f"data.source={self.source!r}; choose hub, local or synthetic")
        if self.source == "local" and self.root is None:
            raise RecipeError("data.source=local needs data.root (a folder with one sub-folder per subtask)")
        if self.split not in BLINK_SPLITS:
            raise RecipeError(f"data.split={self.split!r}; choose one of {list(BLINK_SPLITS)}")
        if self.subtasks is not None:
            self.subtasks = check_subtasks(self.subtasks, local=self.source == "local" or self.root is not None)
        _positive(self.limit, "data.limit", allow_none=True)
        _positive(self.synthetic_n, "data.synthetic_n")
        if self.synthetic_image_size < 16:
            raise RecipeError(f"data.synthetic_image_size must be >= 16 pixels, got {self.synthetic_image_size}")


@dataclass
class ProbeConfig:
    """Latent probes. layers: LM layers probed (None = all). probe_layer: int or "heldout".

    locate_markers: find the point markers drawn into the pixels of point-marked questions that carry no
    coordinates (hub/local BLINK), so the point probes run on them (vkvtrain.data.blink_points).
    marker_cache: folder of the per-question localisation cache (None = <vkvtrain cache>/markers).
    """

    enabled: bool = True
    layers: list[int] | None = None
    probe_layer: int | str = "heldout"
    heldout_fraction: float = 0.3
    locate_markers: bool = True
    marker_cache: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.probe_layer, str) and self.probe_layer != "heldout":
            raise RecipeError(f"probes.probe_layer={self.probe_layer!r}; give a layer index or 'heldout'")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise RecipeError(f"probes.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass
class Qwen2_5_VLResolution:
    """Qwen2.5-VL image processor pixel budget: each image is resized (aspect kept, sides multiples of 28) so
    that min_pixels <= height * width <= max_pixels. None keeps the checkpoint's own processor setting."""

    min_pixels: int | None = LMMS_EVAL_QWEN2_5_VL_MIN_PIXELS
    max_pixels: int | None = LMMS_EVAL_QWEN2_5_VL_MAX_PIXELS

    def __post_init__(self) -> None:
        _positive(self.min_pixels, "resolution.qwen2_5_vl.min_pixels", allow_none=True)
        _positive(self.max_pixels, "resolution.qwen2_5_vl.max_pixels", allow_none=True)
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise RecipeError(f"resolution.qwen2_5_vl.min_pixels={self.min_pixels} exceeds max_pixels={self.max_pixels}")


@dataclass
class ResolutionConfig:
    """Per-family processor resolution settings; the defaults are lmms-eval's model wrappers' (eval/README.md).

    LLaVA-OneVision and LLaVA-NeXT have no setting to choose: their processors already do what lmms-eval does
    (OneVision: anyres_max_9 for a single image, each image of a multi-image prompt padded to a square with the
    image mean and read as its base crop only; NeXT: anyres for every image). results.json records them.
    """

    qwen2_5_vl: Qwen2_5_VLResolution = field(default_factory=Qwen2_5_VLResolution)

    def for_family(self, family: str) -> dict[str, Any]:
        """The settings to apply to ``family``'s processor (keys the family adapter knows)."""
        if family == "qwen2_5_vl":
            return {"min_pixels": self.qwen2_5_vl.min_pixels, "max_pixels": self.qwen2_5_vl.max_pixels}
        return {}

    def apply(self, mlm: Any) -> dict[str, Any]:
        """Set ``mlm``'s processor to these settings; returns what the processor then uses (for the outputs)."""
        mlm.adapter.set_resolution(mlm.processor, self.for_family(mlm.family))
        return {"family": mlm.family, **mlm.adapter.resolution(mlm.processor)}


@dataclass
class WandbConfig:
    """W&B logging: set ``project`` to log the tables (mode "offline" needs no network)."""

    project: str | None = None
    name: str | None = None
    mode: Literal["online", "offline", "disabled"] = "offline"
    save_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise RecipeError(f"wandb.mode={self.mode!r}; choose online, offline or disabled")


@dataclass
class EvalConfig:
    """One BLINK evaluation run (the only evaluation config; ``evaluate_blink`` reads its answer keys).

    model: hub id, local HF folder or tiny://<family>[@mid]; None with ``ckpt_path`` = the model the checkpoint
        was trained on. ckpt_path: a vkvtrain training checkpoint whose interventions are applied to the model.
    dtype: "bfloat16" | "float16" | "float32" | None (float32). device: "cpu", "cuda", "cuda:1"... (None: cuda
        when available); with ``devices`` > 1 it names the accelerator ("cpu" or "cuda").
    mode: "generate" (lmms-eval's protocol: greedy decoding, then the strict parser) or "likelihood" (choice
        scoring from one cached prefill; a faster, different protocol).
    batch_size: questions per forward. max_new_tokens: generate mode's decoding budget (lmms-eval: 1024).
    parser: how generate mode reads a response: "strict" (one claimed letter, vkvtrain.evaluation.parse) or
        "lmms_eval" (lmms-eval's first-letter regex, to reproduce its numbers exactly).
    interventions: untrained interventions applied for this evaluation, in the recipes' format
        (``{class_path, init_args}``), after a checkpoint's own; those that choose positions from data calibrate
        on the images of the first ``calibration_questions`` questions (answers unused).
    devices, num_nodes, strategy: shard the questions over devices x nodes processes with Lightning Fabric
        ("ddp": the command re-runs itself per device, or runs under torchrun / SLURM; "ddp_spawn" /
        "ddp_fork": processes started from this one); results equal a single-process run.
    resolution: per-family processor resolution settings.
    """

    model: str | None = None
    ckpt_path: str | None = None
    dtype: str | None = None
    device: str | None = None
    mode: Literal["likelihood", "generate"] = "generate"
    batch_size: int = 8
    max_new_tokens: int = LMMS_EVAL_MAX_NEW_TOKENS
    parser: Literal["strict", "lmms_eval"] = "strict"
    interventions: list[dict[str, Any]] = field(default_factory=list)
    calibration_questions: int = 16
    output_dir: str = "outputs/blink"
    progress: bool = True
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["ddp", "ddp_spawn", "ddp_fork"] = "ddp"
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptProtocol = field(default_factory=PromptProtocol)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("likelihood", "generate"):
            raise RecipeError(f"mode={self.mode!r}; choose generate (lmms-eval's protocol) or likelihood")
        if self.parser not in ("strict", "lmms_eval"):
            raise RecipeError(f"parser={self.parser!r}; choose strict or lmms_eval")
        _positive(self.batch_size, "batch_size")
        _positive(self.max_new_tokens, "max_new_tokens")
        _positive(self.calibration_questions, "calibration_questions")
        _positive(self.devices, "devices")
        _positive(self.num_nodes, "num_nodes")
        if self.strategy not in STRATEGIES:
            raise RecipeError(f"strategy={self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise RecipeError(f"dtype={self.dtype!r}; choose one of {list(DTYPES)} or null (float32)")
        if not isinstance(self.interventions, list) or not all(isinstance(s, dict) for s in self.interventions):
            raise RecipeError("interventions must be a list of {class_path, init_args} entries, as in recipes")
        for spec in self.interventions:
            if "class_path" not in spec:
                raise RecipeError(f"interventions entry {spec} needs a class_path (and optional init_args), as in recipes")

    def protocol(self) -> dict[str, Any]:
        """What decides the answers, named for every output; runs compare only when this is equal."""
        p = self.prompt
        record: dict[str, Any] = {
            "mode": self.mode,
            "images": "image_1..image_4 in order, empty slots skipped, before the text, in the model's chat template",
            "pre_prompt": p.pre_prompt,
            "post_prompt": p.post_prompt,
            "option_separator": p.option_separator,
        }
        if self.mode == "generate":
            lmms = (p.pre_prompt, p.post_prompt, p.option_separator, self.max_new_tokens) == (
                LMMS_EVAL_PRE_PROMPT, "", ", ", LMMS_EVAL_MAX_NEW_TOKENS)
            parser = "strict parser" if self.parser == "strict" else "lmms-eval's parser"
            record.update(
                name=f"lmms-eval BLINK (greedy generation), {parser}" if lmms
                else f"greedy generation with a custom prompt or budget, {parser}",
                max_new_tokens=self.max_new_tokens, decoding="greedy",
                parser={"strict": "vkvtrain.evaluation.parse.parse_choice (strict)",
                        "lmms_eval": "vkvtrain.evaluation.parse.lmms_eval_choice (lmms-eval's first letter)"}[self.parser])
        else:
            record.update(name="choice likelihood (not lmms-eval's protocol)", continuation=p.continuation,
                          length_norm=p.length_norm)
        return record
