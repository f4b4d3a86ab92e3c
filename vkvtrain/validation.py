"""What a training run measures at validation: `ValidationProbes`, a Lightning callback.

Per validation (and test) batch, from the image keys/values `VKVModule.validation_step` captured at the probed
layers:
- the key input-agnosticism of the split's own images (`KeyInputAgnosticism`, one shared grid size), logged as
  ``<stage>/data/key_agnosticism/score/layer_<L>`` and ``.../n_flagged/layer_<L>``;
- for BLINK-style rows, output right/wrong vs the latent probe's answer at each layer (`SurfacingGap`), logged
  as ``<stage>/data/output_accuracy/<subtask>``, ``<stage>/data/probe_accuracy/<subtask>/layer_<L>`` and
  ``<stage>/data/gap_all/<subtask>/layer_<L>``.
Everything measured on the validation split lives under ``<stage>/data/``; the probe suite (its own synthetic or
real probe data) under ``<stage>/probe/``.
At each epoch end it also runs the perception probe suite on the model as it is now (``probe_tasks``; prompts
carry the interventions' prefix), logged as ``<stage>/probe/<task>/<metric>/<row>`` with rows ``layer_<L>`` or
a named baseline, and draws every per-layer series into one layer x task heatmap for W&B.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from vkvtrain.answer_loss import output_correct
from vkvtrain.capture import KVCapture
from vkvtrain.data.blink import BLINK_SUBTASKS, LetteredChoices, Point, parse_answer
from vkvtrain.data.collate import TrainBatch
from vkvtrain.evaluation.latent import probe_correct_from_capture
from vkvtrain.interventions import Intervention, prompt_prefix
from vkvtrain.interventions.key_artifacts import layer_keys
from vkvtrain.mlm import MLM
from vkvtrain.plots import close, heatmap_figure
from vkvtrain.probes import KeyInputAgnosticism
from vkvtrain.probes.config import DataSpec, PrefixSpec, ProbeConfig
from vkvtrain.probes.suite import ProbeSuite
from vkvtrain.probes.surfacing_gap import SurfacingGap


@dataclass
class ValidationStep:
    """What `VKVModule.validation_step` hands to this callback: the batch, its capture and per-row output
    correctness ((B,) bool: greedy decoding reproduces the answer); the step returns it as ``{"step": ...}``."""

    batch: TrainBatch
    kv: KVCapture
    correct: torch.Tensor


@runtime_checkable
class VKVModuleLike(Protocol):
    """What this callback reads of the module it measures (`vkvtrain.module.VKVModule`, which imports this file)."""

    probe_layers: list[int]

    @property
    def mlm(self) -> MLM: ...

    @property
    def intervention_list(self) -> list[Intervention]: ...


@dataclass
class ValidationRow(LetteredChoices):
    """One BLINK-style validation row as the latent probes read it (`vkvtrain.evaluation.latent.LatentQuestion`)."""

    idx: str
    sub_task: str
    choices: list[str]
    answer: str | None
    n_images: int
    points: dict[str, dict[str, Point]] | None = field(default=None)


def validation_rows(batch: TrainBatch) -> list[ValidationRow]:
    """The batch's rows for the latent probes (answers parsed from the "(A)" format; points as tuples)."""
    return [
        ValidationRow(
            idx=f"validation row {b}", sub_task=batch.tasks[b], choices=batch.choices[b], answer=parse_answer(batch.answers[b]),
            n_images=len(batch.spans[b]),
            points={k: {n: (float(xy[0]), float(xy[1])) for n, xy in v.items()} for k, v in batch.points[b].items()}
            or None,
        )
        for b in range(len(batch))
    ]


def row_key(row: str) -> str:
    """Log-key name of a probe row: LM layers as ``layer_<L>``, baselines by their own name."""
    return f"layer_{row}" if row.isdigit() else row


class ValidationProbes(Callback):
    """Probe and surfacing-gap metrics of a training run, per probed LM layer (see the module docstring).

    Args:
        agnosticism_threshold: flag key positions with input-agnosticism >= this (None: per-layer MAD rule).
        probe_tasks: probe-suite tasks run at each validation end (None: none).
        probe_items: items per probe task. probe_image_size: side of synthetic probe images in pixels.
        probe_data: per task, `vkvtrain.probes.config.DataSpec` fields for real data.
    """

    def __init__(self, agnosticism_threshold: float | None = None, probe_tasks: list[str] | None = None,
                 probe_items: int = 4, probe_image_size: int = 64,
                 probe_data: dict[str, dict[str, Any]] | None = None) -> None:
        self.agnosticism_threshold = agnosticism_threshold
        self.probe_tasks = list(probe_tasks or [])
        self.probe_items = probe_items
        self.probe_image_size = probe_image_size
        self.probe_data = dict(probe_data or {})
        self.layers: list[int] = []
        self.agnosticism: KeyInputAgnosticism | None = None
        self.gap: SurfacingGap | None = None

    # ------------------------------------------------------------------ lifecycle
    def _start(self, pl_module: L.LightningModule) -> None:
        self.layers = list(_vkv_module(pl_module).probe_layers)
        self.agnosticism = None  # sized by the first batch's grid
        # Built on every rank at epoch start (not on the first BLINK-style batch) so every rank joins its sync.
        self.gap = SurfacingGap(num_subtasks=len(BLINK_SUBTASKS), num_layers=len(self.layers)).to(pl_module.device)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs["step"], pl_module.device)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs["step"], pl_module.device)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    # ------------------------------------------------------------------ updates
    def _update(self, step: ValidationStep, device: torch.device) -> None:
        self._update_agnosticism(step, device)
        self._update_gap(step)

    def _update_agnosticism(self, step: ValidationStep, device: torch.device) -> None:
        keys = [layer_keys(step.kv, step.batch.encoded, layer, "keys", min_images=1) for layer in self.layers]
        present = [k for k in keys if k is not None]
        if len(present) != len(keys) or not present:
            return
        if self.agnosticism is None:
            n, d = present[0].shape[1:]
            self.agnosticism = KeyInputAgnosticism(
                num_layers=len(self.layers), num_positions=n, dim=d, threshold=self.agnosticism_threshold,
                layer_names=[str(i) for i in self.layers],
            ).to(device)
        if tuple(present[0].shape[1:]) != (self.agnosticism.num_positions, self.agnosticism.dim):
            return  # images of another grid size: the metric needs one shared grid
        self.agnosticism.update([k.to(device) for k in present])

    def _update_gap(self, step: ValidationStep) -> None:
        assert self.gap is not None
        tasks = step.batch.tasks
        # (n_layers,) per row over kv.layers (== the probed layers), None where no latent probe is defined
        per_row = probe_correct_from_capture(validation_rows(step.batch), step.kv)
        rows = [(b, r) for b, r in enumerate(per_row) if r is not None and tasks[b] in BLINK_SUBTASKS]
        if not rows:
            return
        index = torch.tensor([b for b, _ in rows])
        self.gap.update(
            torch.tensor([BLINK_SUBTASKS.index(tasks[b]) for b, _ in rows]),
            step.correct[index.to(step.correct.device)],
            torch.stack([r for _, r in rows]),
        )

    # ------------------------------------------------------------------ epoch end
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logged: dict[str, float] = {}
        heat_rows: dict[str, list[float]] = {}
        self._agnosticism_values(trainer, stage, logged, heat_rows)
        self._gap_values(stage, logged, heat_rows)
        if self.probe_tasks:
            # Every rank runs the (deterministic) suite: its metrics sum-reduce across processes in compute(),
            # so all ranks must take part; identical states on each rank leave every ratio unchanged.
            for task, metrics in self._run_probe_suite(pl_module).items():
                for name, per_row in metrics.items():
                    for row, value in per_row.items():
                        if not math.isnan(value):
                            logged[f"{stage}/probe/{task}/{name}/{row_key(row)}"] = value
                primary = next(iter(metrics))
                heat_rows[f"{task}:{primary}"] = [metrics[primary].get(str(layer), math.nan) for layer in self.layers]
        for key, value in logged.items():
            pl_module.log(key, value, sync_dist=False, rank_zero_only=True)
        if heat_rows:
            self._log_heatmap(trainer, stage, heat_rows)

    def _agnosticism_values(self, trainer: L.Trainer, stage: str, logged: dict[str, float],
                            heat_rows: dict[str, list[float]]) -> None:
        has_keys = self.agnosticism is not None and self.agnosticism.update_count > 0
        # All ranks must join the metric's sync, or none: a rank without a same-grid batch has no metric.
        if not trainer.strategy.reduce_boolean_decision(has_keys, all=True):
            return
        assert self.agnosticism is not None
        try:
            result = self.agnosticism.compute()
        except ValueError:  # fewer than two images in the whole split
            return
        for i, layer in enumerate(self.layers):
            logged[f"{stage}/data/key_agnosticism/score/layer_{layer}"] = float(result["score"][i])
            logged[f"{stage}/data/key_agnosticism/n_flagged/layer_{layer}"] = float(result["n_flagged"][i])
        heat_rows["data:key_agnosticism"] = [float(v) for v in result["score"]]

    def _gap_values(self, stage: str, logged: dict[str, float], heat_rows: dict[str, list[float]]) -> None:
        assert self.gap is not None
        with warnings.catch_warnings():  # a split without BLINK-style rows never updates it
            warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
            result = self.gap.compute()  # summed over ranks
        for s, task in enumerate(BLINK_SUBTASKS):
            if math.isnan(float(result["output_accuracy"][s])):
                continue  # no question of this subtask
            logged[f"{stage}/data/output_accuracy/{task}"] = float(result["output_accuracy"][s])
            for i, layer in enumerate(self.layers):
                for key in ("gap_all", "probe_accuracy"):
                    value = float(result[key][s, i])
                    if not math.isnan(value):
                        logged[f"{stage}/data/{key}/{task}/layer_{layer}"] = value
            heat_rows[f"probe_acc:{task}"] = [float(v) for v in result["probe_accuracy"][s]]
            heat_rows[f"gap:{task}"] = [float(v) for v in result["gap_all"][s]]

    def _run_probe_suite(self, pl_module: L.LightningModule) -> dict[str, dict[str, dict[str, float]]]:
        """``{task: {metric: {row: value}}}`` from the probe suite on the model as it is now."""
        module = _vkv_module(pl_module)
        mlm: MLM = module.mlm
        prefix = prompt_prefix(module.intervention_list)
        config = ProbeConfig(
            tasks=list(self.probe_tasks), layers=list(self.layers), sources=["layers"],
            data={t: DataSpec(**{"n": self.probe_items, **self.probe_data.get(t, {})}) for t in self.probe_tasks},
            prefix=PrefixSpec(mode="generic", generic=prefix) if prefix else PrefixSpec(mode="none"),
            image_size=self.probe_image_size, device=str(pl_module.device), progress=False,
        )
        was_training = mlm.model.training
        mlm.model.eval()
        try:
            # Lightning validates under inference_mode; the few-shot probe fits a classifier with autograd
            # (on detached features: the model's tensors get no gradient).
            with torch.inference_mode(False), torch.enable_grad():
                return ProbeSuite(mlm, config).run()
        finally:
            mlm.model.train(was_training)

    def _log_heatmap(self, trainer: L.Trainer, stage: str, rows: dict[str, list[float]]) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or trainer.global_rank != 0:
            return
        names = list(rows)
        grid = np.array([rows[n] for n in names], dtype=float).T  # (layers, series)
        fig = heatmap_figure(grid, [str(i) for i in self.layers], names, row_title="LM layer", limits=None,
                             title=f"{stage} at step {trainer.global_step}: per-layer probe metrics")
        for logger in loggers:
            logger.log_image(key=f"{stage}/layer_task_heatmap", images=[fig], step=trainer.global_step)
        close(fig)


def _vkv_module(pl_module: L.LightningModule) -> VKVModuleLike:
    if not isinstance(pl_module, VKVModuleLike):
        raise TypeError(f"ValidationProbes measures a VKVModule, got {type(pl_module).__name__}.")
    return pl_module


def step_output(batch: TrainBatch, kv: KVCapture, logits: torch.Tensor, targets: torch.Tensor) -> ValidationStep:
    """The validation step's hand-over: ``logits`` (B, K-1, V) of the answer window against ``targets``."""
    return ValidationStep(batch=batch, kv=kv, correct=output_correct(logits.detach(), targets))
