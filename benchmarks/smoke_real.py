"""Every real recipe at real shapes: checked on the meta device at each size it names, planned for a GPU, and run
for 2 training steps + 1 validation at the largest shape this machine holds. Not part of CI (`make smoke-real`).

For each recipe in recipes/ (not recipes/tiny):
1. meta check, per checkpoint its ``# sizes:`` line names: the recipe's model section built as ``fit`` builds it
   on a config-only `tiny://<family>@<size>` (layers, LoRA targets, quantization skip modules, probe layers
   resolve; `vkvtrain.recipe_check`);
2. memory plan, per size (`vkvtrain.memory_plan`): weights + trainable state + activations at the recipe's batch,
   for the recipe's training prompts (synthetic BLINK at the recipe's image size, encoded by that checkpoint's
   processor: median and longest prompt) and for its max_length, with and without gradient checkpointing;
3. validation cost per size: the probe-image forwards one validation runs with the recipe's probe settings, and
   their FLOPs (2 x (LM decoder parameters x prompt tokens + vision parameters x patches encoded));
4. CPU run at the LLaVA-OneVision-0.5B shape (tiny://llava_onevision@0.5b, 894M parameters, float32), each recipe
   in its own process: the recipe as written with only the model (+ float32 and CPU trainer settings), the data
   sources (small synthetic BLINK sets), the step counts (2 steps, 1 validation batch) and the probe-item count
   overridden; prints seconds per step, validation and probe-suite seconds, peak RSS, and the plan for that run.

    python benchmarks/smoke_real.py [--threads 2] [--recipes prefix key_artifact] [--no-run] [--probe-items 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from vkvtrain.data.training import DataSource, ExampleDataset  # noqa: E402
from vkvtrain.memory_plan import (  # noqa: E402
    DTYPE_BYTES,
    GiB,
    LMShape,
    MemoryPlan,
    plan_training,
    training_shape,
    weight_bytes,
)
from vkvtrain.prompts import Prompt  # noqa: E402
from vkvtrain.recipe_check import MetaCheck, check_on_meta, recipe_section, recipe_sizes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CPU_SHAPE = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
CPU_MODEL = "tiny://llava_onevision@0.5b"
CARD = 80 * 10**9  # an 80 GB card (A100/H100 80GB), in bytes as vendors count them
#: the CPU run's data: single-image synthetic BLINK questions (the recipes' own generator and image size) so that
#: 4 same-size images per batch also feed the key-artifact loss; validation on Art_Style, as the recipes' val set
TRAIN_SOURCE = "synthetic://blink?n_per_subtask=2&subtasks=Counting,Spatial_Relation,Relative_Depth,IQ_Test&image_size={size}"
VAL_SOURCE = "synthetic://blink?n_per_subtask=4&subtasks=Art_Style&image_size={size}"
#: key_agnosticism needs >= 2 images; the other tasks run ``--probe-items`` items each
SMOKE_PROBE_DATA = {"key_agnosticism": {"n": 2}}


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


# --------------------------------------------------------------------------- prompt lengths and plans
def prompt_lengths(check: MetaCheck, source: str) -> list[int]:
    """Token counts of every prompt of ``source`` (a recipe's training source, shrunk to 4 rows per subtask)
    as the checkpoint's own processor encodes them (with the recipe's prefix placeholders, answers appended)."""
    train = recipe_section(check.recipe, "data")["train"]
    spec = DataSource(**{**train, "source": source})
    prefix = "".join(p for iv in check.module.intervention_list if (p := iv.prompt_prefix())) or None
    data = ExampleDataset(spec)
    mlm = check.module.mlm
    return [mlm.encode([Prompt(images=ex.images, text=ex.question, prefix=prefix, answer=ex.answer)]).input_ids.shape[1]
            for ex in (data[i] for i in range(len(data)))]


def shrink(source: str, n_per_subtask: int = 4) -> str:
    """The same synthetic source with ``n_per_subtask`` rows per subtask."""
    head, _, query = source.partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if part)
    options["n_per_subtask"] = str(n_per_subtask)
    return head + "?" + "&".join(f"{k}={v}" for k, v in options.items())


def plan_for(check: MetaCheck, batch: int, seq_len: int, gradient_checkpointing: bool,
             dtype: str | None = None, mask_bytes: int = 1) -> MemoryPlan:
    """The memory plan of ``check``'s recipe at ``seq_len`` (dtype: the recipe's unless given)."""
    module, mlm = check.module, check.module.mlm
    dtype = dtype or module.dtype_name
    quantization = module.quantization
    compute = DTYPE_BYTES[quantization.compute_dtype] if quantization else DTYPE_BYTES[dtype or "float32"]
    shape = LMShape.from_config(mlm.text_config)
    weights = weight_bytes(mlm.model, dtype, quantization, check.quantization_skips)
    training = training_shape(module.intervention_list, shape, batch, seq_len, compute, gradient_checkpointing)
    return plan_training(shape, weights, training, mask_bytes=mask_bytes)


def plan_rows(recipe: Path) -> list[dict[str, Any]]:
    """Meta check + plan for every size the recipe names."""
    data = recipe_section(recipe, "data")
    batch, max_length = int(data.get("batch_size", 4)), data.get("max_length")
    gc = bool(recipe_section(recipe, "model").get("gradient_checkpointing", False))
    rows = []
    for hub_id in recipe_sizes(recipe):
        started = time.perf_counter()
        check = check_on_meta(recipe, hub_id)
        lengths = sorted(prompt_lengths(check, shrink(data["train"]["source"])))
        row: dict[str, Any] = {
            "recipe": recipe.name, "checkpoint": hub_id, "layers": check.num_layers,
            "kv": f"{check.kv_heads}x{check.head_dim}", "probe_layers": check.probe_layers,
            "lora_modules": len(check.lora_modules), "grad_layers": check.grad_layers,
            "skips": check.quantization_skips, "batch": batch, "gc": gc, "max_length": max_length,
            "median_tokens": lengths[len(lengths) // 2], "longest_tokens": lengths[-1],
        }
        for label, seq in (("typical", row["median_tokens"]), ("longest", row["longest_tokens"]),
                           ("max_length", max_length or row["longest_tokens"])):
            for with_gc in (True, False):
                plan = plan_for(check, batch, int(seq), with_gc)
                row[f"{label}_{'gc' if with_gc else 'nogc'}"] = plan.total
            row["weights"] = plan.weights
        bound = row[f"max_length_{'gc' if gc else 'nogc'}"]
        row["fits_80gb"] = bound <= 0.9 * CARD
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        print(f"  {hub_id}: {row['layers']} layers, KV {row['kv']}, probe layers {row['probe_layers']}, "
              f"{row['lora_modules']} LoRA modules, grad layers {row['grad_layers']}, skips {row['skips']}; "
              f"prompts {lengths[0]}-{lengths[-1]} tokens (median {row['median_tokens']}); plan "
              f"{gib(row['longest_gc'])} GiB with / {gib(row['longest_nogc'])} GiB without checkpointing at the "
              f"longest, {gib(row['max_length_gc'])} / {gib(row['max_length_nogc'])} at max_length {max_length}",
              flush=True)
    return rows


# --------------------------------------------------------------------------- validation cost
#: an assumed sustained bf16 throughput of one 80 GB GPU, to turn FLOPs into seconds (an assumption, not measured)
GPU_FLOPS = 200e12


def probe_images(tasks: list[str], items: int, data: dict[str, dict[str, Any]]) -> int:
    """Single-image forwards the probe suite runs in one validation with these probe settings
    (``model.probe_tasks``, ``model.probe_items``, ``model.probe_data``)."""
    from vkvtrain.probes.config import DataSpec, ProbeConfig
    from vkvtrain.probes.suite import make_dataset

    config = ProbeConfig(tasks=tasks, layers=[0], sources=["layers"], image_size=32,
                         data={t: DataSpec(**{"n": items, **data.get(t, {})}) for t in tasks})
    count = 0
    for task in tasks:
        dataset: Any = make_dataset(task, config)
        if task == "fewshot":
            count += sum(len(episode.support) + 1 for episode in dataset)
        elif task == "coseg":
            count += sum(len(group.samples) for group in dataset)
        elif task == "keypoints":
            count += 2 * len(dataset)
        elif task == "temporal":
            count += sum(len(clip.frames) for clip in dataset)
        elif task == "key_agnosticism":
            count += min(len(dataset), config.probe.key_images)
        else:
            count += len(dataset)
    return count


def image_forward_flops(check: MetaCheck, image_size: int) -> float:
    """FLOPs of one probe forward (one synthetic image of ``image_size`` px, a short question)."""
    from PIL import Image

    from vkvtrain.models.anyres import AnyresAdapter

    mlm = check.module.mlm
    batch = mlm.encode([Prompt(images=[Image.new("RGB", (image_size, image_size))], text="What is in the image?")])
    vision = sum(p.numel() for name in mlm.adapter.vision_modules for p in mlm.model.get_submodule(name).parameters())
    decoder = sum(p.numel() for p in mlm.decoder_layers().parameters())
    config = mlm.model.config
    if isinstance(mlm.adapter, AnyresAdapter):
        side = config.vision_config.image_size // config.vision_config.patch_size
        patches = sum(mlm.adapter.crops_per_image(mlm.model, batch.inputs)) * side * side
    else:  # Qwen2.5-VL: the ViT encodes every 14 px patch (image_grid_thw), the LM sees them merged 2 x 2
        patches = int(batch.inputs["image_grid_thw"].prod(-1).sum())
    return 2.0 * (decoder * batch.input_ids.shape[1] + vision * patches)


def validation_cost(recipe: Path, cpu_seconds_per_image: float | None) -> list[str]:
    """One line per size: probe images per validation, their FLOPs, the CPU time measured at 0.5B scaled by
    FLOPs, and the time at GPU_FLOPS."""
    lines = []
    image_size = int(recipe_section(recipe, "model").get("probe_image_size", 64))
    cpu_flops = image_forward_flops(check_on_meta(recipe, CPU_SHAPE), image_size)
    for hub_id in recipe_sizes(recipe):
        check = check_on_meta(recipe, hub_id)
        suite = check.module.validation_probes
        images = probe_images(suite.probe_tasks, suite.probe_items, suite.probe_data)
        flops = image_forward_flops(check, image_size)
        cpu = f"{images * cpu_seconds_per_image * flops / cpu_flops / 60:.0f} min on this CPU (scaled by FLOPs)" \
            if cpu_seconds_per_image else "no CPU measurement"
        lines.append(f"{recipe.name} @ {hub_id}: {images} probe-image forwards x {flops / 1e12:.1f} TFLOP = "
                     f"{images * flops / 1e15:.2f} PFLOP per validation; {cpu}; ~{images * flops / GPU_FLOPS:.0f} s "
                     f"at an assumed {GPU_FLOPS / 1e12:.0f} TFLOP/s")
    return lines


# --------------------------------------------------------------------------- the CPU run (child process)
def rss_kib(field: str = "VmHWM") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


class PhaseTimer(Callback):
    """Wall time of every training step, of the validation and of its probe suite; the peak RSS of the training
    steps and of the validation; and each training step's peak of torch allocations (torch's profiler), the
    number the memory plan predicts (RSS adds the CPU allocator's retained memory and the mapped weights)."""

    def __init__(self) -> None:
        self.step_peaks: list[int] = []
        self.profiler: Any = None
        self.steps: list[float] = []
        self.step_tokens: list[list[int]] = []
        self.val_tokens: list[list[int]] = []
        self.marks: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.peaks["before_train_rss_kib"] = rss_kib("VmRSS")
        reset_peak()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.step_tokens.append(list(batch.inputs["input_ids"].shape))
        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.start()
        self.marks["step"] = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append(time.perf_counter() - self.marks["step"])
        self.profiler.stop()
        live = peak = 0
        for event in sorted(self.profiler.events(), key=lambda e: e.time_range.start):
            live += event.self_cpu_memory_usage
            peak = max(peak, live)
        self.step_peaks.append(peak)
        self.profiler = None

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.peaks["train_hwm_kib"] = rss_kib()
        reset_peak()
        self.marks["val"] = time.perf_counter()

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self.val_tokens.append(list(batch.inputs["input_ids"].shape))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.marks["probes"] = time.perf_counter()  # runs before ValidationProbes' own epoch end (the suite)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        end = time.perf_counter()
        self.marks["val_seconds"] = end - self.marks["val"]
        self.marks["probe_seconds"] = end - self.marks["probes"]
        self.peaks["val_hwm_kib"] = rss_kib()


def child(recipe: Path, out: Path, threads: int, probe_items: int, model: str) -> None:
    """One recipe at ``model``'s shape on CPU; writes its numbers as JSON to ``out``."""
    torch.set_num_threads(threads)
    from vkvtrain.training_cli import build_cli

    start_rss = rss_kib("VmRSS")
    image_size = int(recipe_section(recipe, "model").get("probe_image_size", 384))
    work = Path(tempfile.mkdtemp(prefix="smoke-real-"))
    overrides = [
        f"--model.model={model}", "--model.dtype=float32",
        f"--model.probe_items={probe_items}", f"--model.probe_data={json.dumps(SMOKE_PROBE_DATA)}",
        f"--data.train.source={TRAIN_SOURCE.format(size=image_size)}",
        f"--data.val.source={VAL_SOURCE.format(size=image_size)}", "--data.val.subset=null",
        "--data.val.split=val", "--data.num_workers=0",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null",
        "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={work}", f"--trainer.logger.init_args.save_dir={work}",
    ]
    if model != CPU_MODEL:  # a plumbing check on a smaller model: the recipe's layer indices may not exist there
        overrides.append("--model.probe_layers=null")
    result: dict[str, Any] = {"recipe": recipe.name, "overrides": overrides, "threads": threads}
    started = time.perf_counter()
    try:
        cli = build_cli(["fit", "-c", str(recipe), *overrides], run=False)
        timer = PhaseTimer()
        getattr(cli.trainer, "callbacks").append(timer)  # set at Trainer init, not in its stubs
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        result.update(ok=True, probe_tasks=cli.model.validation_probes.probe_tasks, steps=timer.steps,
                      step_peak_bytes=timer.step_peaks, step_tokens=timer.step_tokens, val_tokens=timer.val_tokens,
                      val_seconds=timer.marks.get("val_seconds"), probe_seconds=timer.marks.get("probe_seconds"),
                      start_rss_kib=start_rss, **timer.peaks)
    except Exception as error:  # the report says which recipe failed and why; the other recipes still run
        result.update(ok=False, error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    result["seconds"] = time.perf_counter() - started
    out.write_text(json.dumps(result))


def run_child(recipe: Path, threads: int, probe_items: int, model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        command = [sys.executable, __file__, "--child", str(recipe), "--json", str(out), "--threads", str(threads),
                   "--probe-items", str(probe_items), "--model", model]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if not out.exists():
            return {"recipe": recipe.name, "ok": False, "error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def cpu_plan(recipe: Path, result: dict[str, Any]) -> MemoryPlan | None:
    """The plan of the CPU run as it ran: float32, its batch and longest prompt, CPU dropout masks."""
    if not result.get("ok"):
        return None
    check = check_on_meta(recipe, CPU_SHAPE)
    batch, seq = max(result["step_tokens"], key=lambda shape: shape[1])
    gc = bool(recipe_section(recipe, "model").get("gradient_checkpointing", False))
    return plan_for(check, batch, seq, gc, dtype="float32", mask_bytes=4)


# --------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the CPU run (pinned)")
    parser.add_argument("--recipes", nargs="*", default=None, help="recipe names (default: every recipes/*.yaml)")
    parser.add_argument("--no-run", action="store_true", help="meta checks and plans only")
    parser.add_argument("--no-plan", action="store_true", help="the CPU run only")
    parser.add_argument("--probe-items", type=int, default=1, help="probe items per task in the CPU run")
    parser.add_argument("--model", default=CPU_MODEL, help="the CPU run's model (a smaller one checks the plumbing)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.json, args.threads, args.probe_items, args.model)
        return
    torch.set_num_threads(args.threads)
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    if args.recipes:
        recipes = [r for r in recipes if r.stem in args.recipes]
    print(f"# smoke-real: {len(recipes)} recipes, torch threads {args.threads}, {os.cpu_count()} CPUs\n")
    all_rows, runs = [], []
    for recipe in recipes if not args.no_plan else []:
        print(f"== {recipe.name}: meta check + plan", flush=True)
        all_rows += plan_rows(recipe)
    print("\n| recipe | checkpoint | batch | prompt tokens median / longest / max_length | plan GiB, checkpointing "
          "on: longest / max_length | off: longest / max_length | recipe's setting fits 80 GB |")
    print("|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(f"| {r['recipe']} | {r['checkpoint']} | {r['batch']} | {r['median_tokens']} / {r['longest_tokens']} / "
              f"{r['max_length']} | {gib(r['longest_gc'])} / {gib(r['max_length_gc'])} | {gib(r['longest_nogc'])} / "
              f"{gib(r['max_length_nogc'])} | {'yes' if r['fits_80gb'] else 'NO'} "
              f"(checkpointing {'on' if r['gc'] else 'off'}) |")
    if args.no_run:
        return
    print(f"\n== CPU run at {args.model} (float32), one process per recipe", flush=True)
    for recipe in recipes:
        result = run_child(recipe, args.threads, args.probe_items, args.model)
        plan = cpu_plan(recipe, result) if args.model == CPU_MODEL else None
        result["plan_total"] = plan.total if plan else 0
        result["plan_above_weights"] = plan.total - plan.weights if plan else 0
        runs.append(result)
        if result.get("ok"):
            print(f"  {recipe.name}: steps {', '.join(f'{s:.0f}' for s in result['steps'])} s "
                  f"(batches {result['step_tokens']}), validation {result['val_seconds']:.0f} s of which probe suite "
                  f"{result['probe_seconds']:.0f} s; peak RSS train {result['train_hwm_kib'] / 2**20:.1f} GiB, "
                  f"validation {result['val_hwm_kib'] / 2**20:.1f} GiB (process start "
                  f"{result['start_rss_kib'] / 2**20:.1f}); torch peak per step "
                  f"{', '.join(gib(b) for b in result['step_peak_bytes'])} GiB vs plan above the weights "
                  f"{gib(result['plan_above_weights'])} GiB (plan total {gib(result['plan_total'])} GiB)", flush=True)
        else:
            print(f"  {recipe.name}: FAILED: {result['error']}", flush=True)
    print("\n== validation cost (probe suite) per size")
    smoke_images = None
    for recipe, result in zip(recipes, runs):
        if result.get("ok") and smoke_images is None:
            smoke_images = probe_images(result["probe_tasks"], args.probe_items, SMOKE_PROBE_DATA)
        per_image = (result["probe_seconds"] / smoke_images if result.get("ok") and smoke_images
                     and args.model == CPU_MODEL else None)
        if per_image:
            print(f"  {recipe.name}: measured {per_image:.1f} s per probe image at the 0.5B shape "
                  f"({result['probe_seconds']:.0f} s for {smoke_images} images)")
        for line in validation_cost(recipe, per_image):
            print("  " + line)
    print("\n| recipe | s/step (2 steps) | validation s (probe suite s) | peak RSS GiB train / val | torch peak "
          "GiB per step / plan above weights | plan total GiB |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        if r.get("ok"):
            print(f"| {r['recipe']} | {statistics.mean(r['steps']):.0f} ({', '.join(f'{s:.0f}' for s in r['steps'])}) "
                  f"| {r['val_seconds']:.0f} ({r['probe_seconds']:.0f}) | {r['train_hwm_kib'] / 2**20:.1f} / "
                  f"{r['val_hwm_kib'] / 2**20:.1f} | {' , '.join(gib(b) for b in r['step_peak_bytes'])} / "
                  f"{gib(r['plan_above_weights'])} | {gib(r['plan_total'])} |")
        else:
            print(f"| {r['recipe']} | failed: {r['error']} | | | | |")


if __name__ == "__main__":
    main()
