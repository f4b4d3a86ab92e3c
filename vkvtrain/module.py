"""VKVModule: an MLM under a list of interventions, trained and validated by Lightning.

The HF model is built in ``configure_model`` (so ddp_spawn / FSDP build it where it runs); the base weights
are frozen and only the interventions' tensors train. Validation captures the image keys/values of the
probed layers and updates, per layer, the key input-agnosticism metric and the surfacing-gap metric (model
output right/wrong vs a latent correspondence probe on the image values); epoch end logs every per-layer
value and a layer x task heatmap. Checkpoints hold the trainable tensors and the resolved recipe only.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from vkvtrain.checkpointing import checkpoint_entry, intervention_state, load_intervention_states
from vkvtrain.data.collate import TrainBatch, TrainingCollator
from vkvtrain.errors import NonFiniteLossError, RecipeError
from vkvtrain.interventions.base import Intervention
from vkvtrain.interventions.key_artifacts import layer_keys
from vkvtrain.layers import resolve_layers
from vkvtrain.interventions.quantization import Quantization


def output_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: greedy decoding reproduces every answer token (teacher-forced argmax == target).

    Args:
        logits: (B, T, V) predictions of ``targets`` (B, T), -100 off the answer (already shifted).
    """
    ok = (logits.argmax(-1) == targets) | (targets == -100)
    return ok.all(dim=1)


def answer_forward(model: nn.Module, inputs: dict[str, Any]) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Forward whose LM head runs only over the answer window: (output, loss, labels of the window).

    Prompts are left-padded and every answer sits at the end of its row, so the last K positions, K = (length
    from the first labelled column) + 1, hold every prediction the loss needs. Skipping the other positions'
    logits (B x L x vocab, ~150k wide for these families) is most of a tiny model's step and gigabytes on
    a real one. The loss equals transformers' own (mean over answer tokens; tested).

    Returns ``out`` (``out.logits`` is (B, K, V)), the scalar loss, and labels (B, K - 1) aligned with
    ``out.logits[:, :-1]``.
    """
    labels = inputs["labels"]
    labelled = (labels != -100).any(dim=0).nonzero()
    if len(labelled) == 0:
        raise RecipeError("a training batch has no answer tokens; check data.answer_field.")
    first = int(labelled[0])
    keep = labels.shape[1] - first + 1
    # use_cache=False: nothing decodes after this forward, and a cache would hold every layer's K/V.
    out = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep, use_cache=False)
    window = labels[:, labels.shape[1] - keep + 1:]  # (B, K-1): targets of logits[:, :-1]
    logits = out.logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), window.reshape(-1),
                                             ignore_index=-100)
    return out, loss, window


def blink_questions(batch: TrainBatch) -> list[Any]:
    """The batch's rows as ``BlinkQuestion``s (images stand in by count), for the BLINK latent probes."""
    from vkvtrain.data.blink import BlinkQuestion, parse_answer

    return [
        BlinkQuestion(
            idx=str(b), sub_task=batch.tasks[b], question="", prompt="", choices=batch.choices[b],
            images=[None] * len(batch.spans[b]), answer=parse_answer(batch.answers[b]),  # type: ignore[list-item]
            points={k: {n: tuple(xy) for n, xy in v.items()} for k, v in batch.points[b].items()} or None,
        )
        for b in range(len(batch))
    ]


class VKVModule(L.LightningModule):
    """LightningModule of a vkvtrain recipe (the ``model:`` section).

    Args:
        model: hub id, local folder or ``tiny://<family>``.
        dtype: load dtype ("bfloat16" on GPUs); None keeps float32.
        attn_implementation: "eager" or "sdpa" (attention blocking supports both); None = transformers' choice.
        quantization: bitsandbytes loading for QLoRA recipes (``Quantization(bits=4)``); None = full precision.
        interventions: the interventions, applied in order (``class_path`` + ``init_args`` in the recipe).
        learning_rate, weight_decay: AdamW on the trainable tensors of all interventions.
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
        self.model_name = model
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.quantization = quantization
        self.interventions = nn.ModuleList(interventions or [])
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.probe_layer_spec = probe_layers
        self.agnosticism_threshold = agnosticism_threshold
        self.gradient_checkpointing = gradient_checkpointing
        self.calibration_batches = calibration_batches
        self.probe_tasks = probe_tasks
        self.probe_items = probe_items
        self.probe_image_size = probe_image_size
        self.probe_data = probe_data or {}
        if probe_tasks is not None:
            from vkvtrain.probes.config import TASKS

            unknown = [t for t in probe_tasks if t not in TASKS]
            if unknown:
                raise RecipeError(f"model.probe_tasks: unknown task(s) {unknown}; choose from {list(TASKS)}.")
        self.recipe: str = ""  # the resolved recipe (YAML), filled in by the CLI
        self.mlm: Any = None
        self._pending_state: dict[str, torch.Tensor] | None = None
        self.probe_layers: list[int] = []
        self._agnosticism: Any = None
        self._gap: Any = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.mlm is None:
            self._build()
            if self._pending_state is not None:
                load_intervention_states(list(self.interventions), self._pending_state)
                self._pending_state = None
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            self.mlm.model.train()

    def _build(self) -> None:
        from vkvtrain.models.loading import load_mlm

        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        mlm = load_mlm(
            self.model_name, dtype=self.dtype_name, attn_implementation=self.attn_implementation,
            quantization=self.quantization.to_bnb_config() if self.quantization else None,
            # bitsandbytes weights are quantized while loading onto their device
            device_map={"": device} if self.quantization and device.type == "cuda" else None,
        )
        mlm.model.requires_grad_(False)
        if self.gradient_checkpointing:
            mlm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            mlm.model.enable_input_require_grads()
        for intervention in self.interventions:
            intervention.attach(mlm)
        self.mlm = mlm
        self.hf_model = mlm.model  # registered so Lightning moves it; its frozen weights are not checkpointed
        self.probe_layers = resolve_layers(self.probe_layer_spec, mlm.num_layers, "model.probe_layers")
        from vkvtrain.data.blink import BLINK_SUBTASKS
        from vkvtrain.probes.surfacing_gap import SurfacingGap

        # Built eagerly (not on the first BLINK-style batch) so every DDP rank takes part in its sync.
        self._gap = SurfacingGap(num_subtasks=len(BLINK_SUBTASKS), num_layers=len(self.probe_layers))

    def collator(self, max_length: int | None = None) -> TrainingCollator:
        """collate_fn for the datamodule: prompts carry the interventions' prefix text before the images."""
        self.configure_model()
        parts = [p for iv in self.interventions if (p := iv.prompt_prefix())]
        return TrainingCollator(self.mlm, prefix="".join(parts) or None, max_length=max_length)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for iv in self.interventions for p in iv.parameters() if p.requires_grad]
        params += [p for iv in self.interventions for p in iv.extra_trainable_parameters()]
        return params

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.trainable_parameters()
        if not params:
            raise RecipeError("nothing to train: the recipe's interventions have no trainable tensors.")
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ steps
    def _forward(self, batch: TrainBatch, layers: list[int], grad: bool) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
        """(output, answer loss, answer-window targets, captured KV or None)."""
        for intervention in self.interventions:
            intervention.on_batch(batch)
        if not layers:
            return (*answer_forward(self.mlm.model, batch.inputs), None)
        with self.mlm.capture(layers=layers, grad=grad) as kv:
            out, loss, window = answer_forward(self.mlm.model, batch.inputs)
        return out, loss, window, kv

    def training_step(self, batch: TrainBatch, batch_idx: int) -> torch.Tensor:
        layers = sorted({layer for iv in self.interventions for layer in iv.grad_layers()})
        _, loss, _, kv = self._forward(batch, layers, grad=True)
        self.log("train/lm_loss", loss.detach(), batch_size=len(batch))
        for i, intervention in enumerate(self.interventions):
            extra = intervention.loss(kv, batch)
            if extra is not None:
                self.log(f"train/{type(intervention).__name__}_{i}", extra.detach(), batch_size=len(batch))
                loss = loss + extra
        if not torch.isfinite(loss):
            callback = self.trainer.checkpoint_callback if self._trainer is not None else None
            folder = getattr(callback, "dirpath", None) or "the checkpoint folder"
            raise NonFiniteLossError(
                f"the training loss became {float(loss.detach())} at global step {self.global_step} "
                f"(batch {batch_idx}); training stopped. The last good checkpoint is kept in {folder}: lower "
                "model.learning_rate or an intervention weight and resume from it with --ckpt_path."
            )
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch))
        return loss

    def _eval_step(self, batch: TrainBatch, stage: str) -> None:
        out, loss, window, kv = self._forward(batch, self.probe_layers, grad=False)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        self._update_agnosticism(kv, batch)
        self._update_gap(kv, batch, output_correct(out.logits[:, :-1].detach(), window))

    def validation_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: TrainBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ------------------------------------------------------------------ metrics
    def _update_agnosticism(self, kv: Any, batch: TrainBatch) -> None:
        from vkvtrain.probes import KeyInputAgnosticism

        keys = [layer_keys(kv, batch, layer, "keys", min_images=1) for layer in self.probe_layers]
        if any(k is None for k in keys):
            return
        if self._agnosticism is None:
            n, d = keys[0].shape[1:]
            self._agnosticism = KeyInputAgnosticism(
                num_layers=len(self.probe_layers), num_positions=n, dim=d, threshold=self.agnosticism_threshold,
                layer_names=[str(i) for i in self.probe_layers],
            ).to(self.device)
        if tuple(keys[0].shape[1:]) != (self._agnosticism.num_positions, self._agnosticism.dim):
            return  # images of another grid size: the metric needs one shared grid
        self._agnosticism.update([k.to(self.device) for k in keys])

    def _update_gap(self, kv: Any, batch: TrainBatch, correct: torch.Tensor) -> None:
        from vkvtrain.data.blink import BLINK_SUBTASKS

        from vkvtrain.evaluation.latent import probe_correct_from_capture

        # (n_layers,) per row over kv.layers (== self.probe_layers), None where no latent probe is defined
        correct_per_row = probe_correct_from_capture(blink_questions(batch), kv)
        rows = [(b, r) for b, r in enumerate(correct_per_row) if r is not None and batch.tasks[b] in BLINK_SUBTASKS]
        if not rows:
            return
        index = torch.tensor([b for b, _ in rows])
        self._gap.update(
            torch.tensor([BLINK_SUBTASKS.index(batch.tasks[b]) for b, _ in rows]),
            correct[index.to(correct.device)],
            torch.stack([r for _, r in rows]),
        )

    # ------------------------------------------------------------------ calibration
    def _calibrate(self) -> None:
        """Interventions that choose their positions from data (attention blocking without ``positions``)
        calibrate on up to ``calibration_batches`` validation batches (training batches if no val split)."""
        pending = [iv for iv in self.interventions if getattr(iv, "needs_calibration", False)]
        if not pending:
            return
        datamodule = self.trainer.datamodule
        loader = datamodule.val_dataloader() if getattr(datamodule, "val_set", None) is not None \
            else datamodule.train_dataloader()
        batches = []
        for batch in loader:
            batches.append(batch.to(self.device))
            if len(batches) >= self.calibration_batches:
                break
        was_training = self.mlm.model.training
        self.mlm.model.eval()
        for intervention in pending:
            chosen = intervention.calibrate(self.mlm, batches)
            self.print(f"{type(intervention).__name__}: calibrated positions {chosen}")
        self.mlm.model.train(was_training)

    def on_fit_start(self) -> None:
        self._calibrate()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._calibrate()

    def on_test_start(self) -> None:
        self._calibrate()

    def on_validation_epoch_start(self) -> None:
        for metric in (self._agnosticism, self._gap):
            if metric is not None:
                metric.reset()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        logged: dict[str, float] = {}
        heat_rows: dict[str, list[float]] = {}
        has_keys = self._agnosticism is not None and self._agnosticism.update_count > 0
        # All ranks must join the metric's sync, or none: a rank without a same-grid batch has no metric.
        if self.trainer.strategy.reduce_boolean_decision(has_keys, all=True):
            try:
                result = self._agnosticism.compute()
            except ValueError:  # fewer than two images in the whole split
                result = None
        else:
            result = None
        if result is not None:
            for i, layer in enumerate(self.probe_layers):
                logged[f"{stage}/data/key_agnosticism/score/layer_{layer}"] = float(result["score"][i])
                logged[f"{stage}/data/key_agnosticism/n_flagged/layer_{layer}"] = float(result["n_flagged"][i])
            heat_rows["key_agnosticism"] = [float(v) for v in result["score"]]
        if self._gap is not None:
            from vkvtrain.data.blink import BLINK_SUBTASKS

            with warnings.catch_warnings():  # a split without BLINK-style rows never updates it
                warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
                result = self._gap.compute()  # summed over ranks
            for s in range(len(BLINK_SUBTASKS)):
                if math.isnan(float(result["output_accuracy"][s])):
                    continue  # no question of this subtask
                task = BLINK_SUBTASKS[s]
                logged[f"{stage}/data/output_accuracy/{task}"] = float(result["output_accuracy"][s])
                for i, layer in enumerate(self.probe_layers):
                    for key in ("gap_all", "probe_accuracy"):
                        value = float(result[key][s, i])
                        if not math.isnan(value):
                            logged[f"{stage}/data/{key}/{task}/layer_{layer}"] = value
                heat_rows[f"probe_acc:{task}"] = [float(v) for v in result["probe_accuracy"][s]]
                heat_rows[f"gap:{task}"] = [float(v) for v in result["gap_all"][s]]
        if self.probe_tasks:
            # Every rank runs the (deterministic) suite: its metrics sum-reduce across processes in compute(),
            # so all ranks must take part; identical states on each rank leave every ratio unchanged.
            for task, metrics in self._run_probe_suite().items():
                for name, per_row in metrics.items():
                    for row, value in per_row.items():
                        if not math.isnan(value):
                            logged[f"{stage}/probe/{task}/{name}/layer_{row}"] = value
                primary = next(iter(metrics))
                heat_rows[f"{task}:{primary}"] = [metrics[primary].get(str(layer), math.nan) for layer in self.probe_layers]
        for key, value in logged.items():
            self.log(key, value, sync_dist=False, rank_zero_only=True)
        if heat_rows:
            self._log_heatmap(stage, heat_rows)

    def _run_probe_suite(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{task: {metric: {layer: value}}}`` from the probe suite on the model as it is now."""
        from vkvtrain.probes.config import DataSpec, PrefixSpec, ProbeConfig
        from vkvtrain.probes.suite import ProbeSuite

        prefix = "".join(p for iv in self.interventions if (p := iv.prompt_prefix()))
        config = ProbeConfig(
            tasks=list(self.probe_tasks or []), layers=list(self.probe_layers), sources=["layers"],
            data={t: DataSpec(**{"n": self.probe_items, **self.probe_data.get(t, {})}) for t in self.probe_tasks or []},
            prefix=PrefixSpec(mode="generic", generic=prefix) if prefix else PrefixSpec(mode="none"),
            image_size=self.probe_image_size, device=str(self.device), progress=False,
        )
        was_training = self.mlm.model.training
        self.mlm.model.eval()
        try:
            # Lightning validates under inference_mode; the few-shot probe fits a classifier with autograd
            # (on detached features: the model's tensors get no gradient).
            with torch.inference_mode(False), torch.enable_grad():
                return ProbeSuite(self.mlm, config).run()
        finally:
            self.mlm.model.train(was_training)

    def _log_heatmap(self, stage: str, rows: dict[str, list[float]]) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in (self.loggers or []) if isinstance(lg, WandbLogger)]
        if not loggers or self.global_rank != 0:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(rows)
        grid = torch.tensor([rows[n] for n in names]).T.numpy()  # (layers, tasks)
        fig, ax = plt.subplots(figsize=(2.0 + 0.45 * len(names), 2.5 + 0.3 * len(self.probe_layers)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(self.probe_layers)), [str(i) for i in self.probe_layers], fontsize=6)
        ax.set_ylabel("LM layer")
        ax.set_title(f"{stage} at step {self.global_step}: per-layer probe metrics", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.03)
        fig.tight_layout()
        for logger in loggers:
            logger.log_image(key=f"{stage}/layer_task_heatmap", images=[fig], step=self.global_step)
        plt.close(fig)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Trainable tensors only: ``interventions.<i>.<name>``."""
        return intervention_state(list(self.interventions))

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        if self.mlm is None:  # not built yet (e.g. ddp_spawn hands results back to the main process)
            self._pending_state = dict(state_dict)
            return None
        load_intervention_states(list(self.interventions), state_dict)
        return None

    def on_train_end(self) -> None:
        """Write each LoRA as a standard peft adapter folder (plain ``PeftModel.from_pretrained`` loads it)."""
        from vkvtrain.interventions.lora import LateLoRA

        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank calls it
        if self.global_rank != 0:
            return
        for i, intervention in enumerate(self.interventions):
            if isinstance(intervention, LateLoRA):
                folder = intervention.save_adapter(root / f"peft_adapter_{i}")
                self.print(f"LoRA adapter saved (peft format): {folder}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(checkpoint_entry(self.recipe, self.model_name, list(self.interventions)))

