"""VKVModule: an MLM under a list of interventions, trained by Lightning.

The module builds the model, runs the steps, owns the optimiser and the checkpoint contents. The HF model is built
in ``configure_model`` (so ddp_spawn / FSDP build it where it runs); the base weights are frozen and only the
interventions' tensors train. What validation measures (probe and surfacing-gap metrics per layer, the probe
suite, the heatmap) lives in `vkvtrain.validation.ValidationProbes`, which this module adds as a callback.
Checkpoints hold the trainable tensors and the resolved recipe only (`vkvtrain.checkpointing`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from vkvtrain.answer_loss import AnswerForward, answer_forward
from vkvtrain.capture import KVCapture
from vkvtrain.checkpointing import (
    checkpoint_entry,
    intervention_state,
    load_intervention_states,
)
from vkvtrain.data.collate import TrainBatch, TrainingCollator
from vkvtrain.errors import NonFiniteLossError, RecipeError
from vkvtrain.interventions import (
    Intervention,
    attach_interventions,
    calibrate_interventions,
    prompt_prefix,
)
from vkvtrain.layers import resolve_layers
from vkvtrain.mlm import MLM
from vkvtrain.models.loading import load_mlm
from vkvtrain.models.quantization import Quantization
from vkvtrain.probes.tasks import TASKS
from vkvtrain.validation import ValidationProbes, ValidationStep, step_output


class VKVModule(L.LightningModule):
    """LightningModule of a vkvtrain recipe (the ``model:`` section).

    Args:
        model: hub id, local folder or ``tiny://<family>``.
        dtype: load dtype ("bfloat16" on GPUs); None keeps float32.
        attn_implementation: "eager" or "sdpa" (attention blocking supports both); None = transformers' choice.
        quantization: bitsandbytes loading for QLoRA recipes (``Quantization(bits=4)``); None = full precision.
        interventions: the interventions, applied in order (``class_path`` + ``init_args`` in the recipe).
        learning_rate, weight_decay: AdamW on the trainable tensors of all interventions. A value changed on
            resume is applied (and printed), not replaced by the checkpoint's optimizer state.
        probe_layers: LM layers probed during validation (negative counts from the end); None = all.
        agnosticism_threshold: flag key positions with input-agnosticism >= this (None: per-layer MAD rule).
        gradient_checkpointing: trade compute for memory on real models.
        calibration_batches: validation batches used by interventions that calibrate on data.
        probe_tasks: perception probe tasks run at each validation end through the probe suite
            (fewshot, coseg, semantic, referring, keypoints, temporal, key_agnosticism); None = none.
            Prompts carry the interventions' prefix (a learned prefix is probed as trained).
        probe_items: items per probe task (synthetic data with exact ground truth unless ``probe_data``).
        probe_image_size: side of the synthetic probe images in pixels.
        probe_data: per task, ``vkvtrain.probes.config.DataSpec`` fields for real data, e.g.
            ``{fewshot: {source: pascal5i, root: /data/pascal, n: 100}}``.
    """

    def __init__(
        self,
        model: str = "tiny://llava_onevision",
        dtype: str | None = None,
        attn_implementation: str | None = None,
        quantization: Quantization | None = None,
        interventions: list[Intervention] | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        probe_layers: list[int] | None = None,
        agnosticism_threshold: float | None = None,
        gradient_checkpointing: bool = False,
        calibration_batches: int = 2,
        probe_tasks: list[str] | None = None,
        probe_items: int = 4,
        probe_image_size: int = 64,
        probe_data: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        unknown = [t for t in probe_tasks or [] if t not in TASKS]
        if unknown:
            raise RecipeError(f"model.probe_tasks: unknown task(s) {unknown}; choose from {list(TASKS)}.")
        self.model_name = model
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.quantization = quantization
        self.interventions = nn.ModuleList(interventions or [])
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.probe_layer_spec = probe_layers
        self.gradient_checkpointing = gradient_checkpointing
        self.calibration_batches = calibration_batches
        self.validation_probes = ValidationProbes(agnosticism_threshold, probe_tasks, probe_items, probe_image_size,
                                                  probe_data)
        self.recipe: str = ""  # the resolved recipe (YAML), filled in by the CLI
        self._mlm: MLM | None = None
        self._pending_state: dict[str, torch.Tensor] | None = None
        self.probe_layers: list[int] = []

    @property
    def mlm(self) -> MLM:
        """The loaded MLM (built by ``configure_model``)."""
        if self._mlm is None:
            raise RuntimeError("VKVModule.mlm is built by configure_model(); call it (or let the Trainer) first.")
        return self._mlm

    @property
    def intervention_list(self) -> list[Intervention]:
        return [iv for iv in self.interventions if isinstance(iv, Intervention)]

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self._mlm is None:
            self._build()
            if self._pending_state is not None:
                load_intervention_states(self.intervention_list, self._pending_state)
                self._pending_state = None
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            self.mlm.model.train()

    def _build(self) -> None:
        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        mlm = load_mlm(
            self.model_name, dtype=self.dtype_name, attn_implementation=self.attn_implementation,
            quantization=self.quantization,
            # bitsandbytes weights are quantized while loading onto their device
            device_map={"": device} if self.quantization and device.type == "cuda" else None,
        )
        mlm.model.requires_grad_(False)
        # transformers' checkpointing, and peft's LoRA on a checkpointed model, each make every sub-model's input
        # embeddings require grad (each call forgets the previous call's hooks, hence two removals), the vision
        # tower's patch embedding included: a graph (checkpoints, recompute, backward) through the frozen tower.
        # Non-reentrant checkpoints need no input that requires grad (LoRA-only runs still get their gradients).
        if self.gradient_checkpointing:
            mlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            mlm.model.disable_input_require_grads()
        attach_interventions(mlm, self.intervention_list)
        if self.gradient_checkpointing:
            mlm.model.disable_input_require_grads()
        self._mlm = mlm
        self.hf_model = mlm.model  # registered so Lightning moves it; its frozen weights are not checkpointed
        self.probe_layers = resolve_layers(self.probe_layer_spec, mlm.num_layers, "model.probe_layers")

    def configure_callbacks(self) -> list[Callback]:
        return [self.validation_probes]

    def collator(self, max_length: int | None = None) -> TrainingCollator:
        """collate_fn for the datamodule: prompts carry the interventions' prefix text before the images."""
        self.configure_model()
        return TrainingCollator(self.mlm, prefix=prompt_prefix(self.intervention_list), max_length=max_length)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for iv in self.intervention_list for p in iv.parameters() if p.requires_grad]
        params += [p for iv in self.intervention_list for p in iv.extra_trainable_parameters()]
        return params

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.trainable_parameters()
        if not params:
            raise RecipeError("nothing to train: the recipe's interventions have no trainable tensors.")
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: TrainBatch, layers: list[int], grad: bool) -> tuple[AnswerForward, KVCapture | None]:
        for intervention in self.intervention_list:
            intervention.on_batch(batch.encoded)
        if not layers:
            return answer_forward(self.mlm.model, batch.inputs), None
        with self.mlm.capture(layers=layers, grad=grad) as kv:
            forward = answer_forward(self.mlm.model, batch.inputs)
        return forward, kv

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        layers = sorted({layer for iv in self.intervention_list for layer in iv.grad_layers()})
        forward, kv = self._forward(batch, layers, grad=True)
        self.log("train/lm_loss", forward.loss.detach(), batch_size=len(batch))
        loss = self._answer_loss(forward)
        for i, intervention in enumerate(self.intervention_list):
            extra = intervention.loss(kv, batch.encoded)
            if extra is not None:
                self.log(f"train/{type(intervention).__name__}_{i}", extra.detach(), batch_size=len(batch))
                loss = loss + extra
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {float(loss.detach())} at global step {self.global_step} "
                f"(batch {batch_idx}); training stopped. {self._resume_advice()}"
            )
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch))
        return loss

    def _answer_loss(self, forward: AnswerForward) -> torch.Tensor:
        """Answer-token cross-entropy normalised by the GLOBAL answer-token count: DDP averages gradients over
        processes, so each process contributes ``sum * world_size / global_count`` and the objective equals
        one process over the whole global batch, whatever the answers' lengths."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return forward.loss
        count = self.trainer.strategy.reduce(forward.n_tokens.float(), reduce_op="sum")
        assert isinstance(count, torch.Tensor)
        return forward.token_loss_sum * world / count.clamp_min(1)

    def validation_step(self, batch: TrainBatch, batch_idx: int) -> dict[str, ValidationStep]:
        return {"step": self._eval_step(batch, "val")}

    def test_step(self, batch: TrainBatch, batch_idx: int) -> dict[str, ValidationStep]:
        return {"step": self._eval_step(batch, "test")}

    def _eval_step(self, batch: TrainBatch, stage: str) -> ValidationStep:
        forward, kv = self._forward(batch, self.probe_layers, grad=False)
        assert kv is not None
        self.log(f"{stage}/loss", forward.loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        return step_output(batch, kv, forward.output.logits[:, :-1], forward.targets)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then a check that every trained tensor is still finite: a step that produced
        inf/NaN stops the run here, before any checkpoint of this step can be written."""
        super().optimizer_step(*args, **kwargs)
        bad = [name for name, tensor in self.state_dict().items() if not torch.isfinite(tensor).all()]
        if bad:
            raise NonFiniteLossError(
                f"trained tensor(s) {bad[:4]} became non-finite at global step {self.global_step}; training "
                f"stopped before saving them. {self._resume_advice()}"
            )

    def _resume_advice(self) -> str:
        """Where to resume from: the newest checkpoint file that exists (or that none does)."""
        trainer = self._trainer
        found: list[Path] = []
        for callback in trainer.checkpoint_callbacks if trainer is not None else []:
            if isinstance(callback, ModelCheckpoint):
                paths = [callback.last_model_path, callback.best_model_path, *callback.best_k_models]
                found += [Path(p) for p in paths if p and Path(p).is_file()]
        if not found:
            return ("No checkpoint was written before this step: lower model.learning_rate or an intervention "
                    "weight and start again.")
        newest = max(found, key=lambda p: p.stat().st_mtime)
        return (f"The last good checkpoint is {newest}: lower model.learning_rate or an intervention weight and "
                f"resume from it with --ckpt_path {newest}.")

    # ------------------------------------------------------------------ calibration and resume
    def _calibrate(self) -> None:
        """Interventions that choose their positions from data (attention blocking without ``positions``)
        calibrate on up to ``calibration_batches`` validation batches (training batches if no val split)."""
        if not any(iv.needs_calibration for iv in self.intervention_list):
            return
        datamodule: Any = getattr(self.trainer, "datamodule")
        loader = datamodule.val_dataloader() if getattr(datamodule, "val_set", None) is not None \
            else datamodule.train_dataloader()
        batches = []
        for batch in loader:
            batches.append(batch.to(self.device).encoded)
            if len(batches) >= self.calibration_batches:
                break
        for name, chosen in calibrate_interventions(self.mlm, self.intervention_list, batches).items():
            self.print(f"{name}: calibrated positions {chosen}")

    def on_fit_start(self) -> None:
        self._calibrate()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._calibrate()

    def on_test_start(self) -> None:
        self._calibrate()

    def on_train_start(self) -> None:
        """After a resume restored the optimiser state: apply this run's learning rate and weight decay."""
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)
        for group in optimizer.param_groups:
            for key, configured in (("lr", self.learning_rate), ("weight_decay", self.weight_decay)):
                if group[key] != configured:
                    self.print(f"resume: model.{'learning_rate' if key == 'lr' else key} {configured} applied "
                               f"(the checkpoint's optimizer had {group[key]})", file=sys.stderr)
                    group[key] = configured

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Trainable tensors only: ``interventions.<i>.<name>``."""
        return intervention_state(self.intervention_list)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> None:
        if self._mlm is None:  # not built yet (e.g. ddp_spawn hands results back to the main process)
            self._pending_state = dict(state_dict)
            return
        load_intervention_states(self.intervention_list, state_dict)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, tensor in checkpoint["state_dict"].items() if not torch.isfinite(tensor).all()]
        if bad:  # never write a "good" checkpoint that holds inf/NaN
            raise NonFiniteLossError(f"refusing to save a checkpoint with non-finite tensor(s) {bad[:4]}.")
        checkpoint.update(checkpoint_entry(self.recipe, self.model_name, self.intervention_list))

    def on_train_end(self) -> None:
        """Write each intervention's standard artifact (e.g. a LoRA as a plain peft adapter folder)."""
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank calls it
        if self.global_rank != 0:
            return
        for i, intervention in enumerate(self.intervention_list):
            written = intervention.export(root, i)
            if written is not None:
                self.print(f"{type(intervention).__name__} #{i} exported: {written}")
