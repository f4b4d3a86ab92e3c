"""``python -m vkvtrain fit|validate|test RECIPE.yaml [overrides]``: LightningCLI over VKVModule + VKVDataModule.

Accepted forms (all end up as LightningCLI arguments):
    fit recipes/prefix.yaml                      positional recipe (shimmed to ``-c recipes/prefix.yaml``)
    fit -c recipes/prefix.yaml --trainer.max_steps=5
    fit recipes/tiny/prefix.yaml trainer.devices=2 trainer.strategy=ddp   bare dotted overrides get ``--``
    fit recipes/prefix.yaml --print_config
The recipe is parsed and type-checked before anything is built, so a typo in a key fails at once, naming the
key (key prefixes are not keys), and the model name is checked before any logger starts.

Every run writes into its own folder ``<trainer.default_root_dir>/<YYYYmmdd-HHMMSS>/`` (vkvtrain.run_dir):
config.yaml, checkpoints/, peft_adapter_<i>/ and the W&B files; ``trainer.default_root_dir`` is the one key that
decides where. ``--ckpt_path`` is a local file or ``last`` (the newest run's last.ckpt under the same root);
checkpoints are read with ``weights_only=True`` only, remote ones are refused.
"""

from __future__ import annotations

import importlib
import inspect
import netrc
import os
import re
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from jsonargparse import ArgumentError
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import Strategy

from vkvtrain.checkpoint_files import (
    LIGHTNING_NAMES,
    load_checkpoint_file,
    refuse_remote,
)
from vkvtrain.datamodule import VKVDataModule
from vkvtrain.errors import CheckpointError, RecipeError
from vkvtrain.models.loading import load_config
from vkvtrain.models.registry import adapter_for
from vkvtrain.module import VKVModule
from vkvtrain.outcome import Outcome, follow_up
from vkvtrain.outputs import apply_default_modes, staged_file, verify_written
from vkvtrain.run_dir import latest_checkpoint, run_dir_for_this_process

SUBCOMMANDS = ("fit", "validate", "test")
DEFAULT_ROOT = "runs"  # when a recipe sets no trainer.default_root_dir
EVAL_CONFIG = Path(__file__).resolve().parents[1] / "eval" / "blink.yaml"
_VALUE_OPTIONS = {"-c", "--config", "--ckpt_path"}
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def shim_argv(argv: Sequence[str]) -> list[str]:
    """Rewrite the vkvtrain conveniences into stock LightningCLI argv.

    ``fit cfg.yaml`` -> ``fit -c cfg.yaml``; ``key.sub=value`` -> ``--key.sub=value``.
    """
    out: list[str] = []
    previous = ""
    for token in argv:
        takes_value = previous in _VALUE_OPTIONS or (previous.startswith("--") and "=" not in previous
                                                       and previous not in ("--print_config",))
        if not token.startswith("-") and token.endswith((".yaml", ".yml")) and not takes_value:
            out += ["-c", token]
        elif not token.startswith("-") and _OVERRIDE.match(token) and not takes_value:
            out.append("--" + token)
        else:
            out.append(token)
        previous = token
    return out


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO of vkvtrain runs: reads local files only and always with ``weights_only=True``
    (whatever the caller asks: ``--weights_only false`` included); writes atomically with the usual file mode
    and fails, naming the file, when it is not on disk afterwards (Lightning's own writer swallows
    PermissionError)."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location="cpu" if map_location is None else map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("vkvtrain writes local checkpoints only (no storage_options).")
        refuse_remote(path)
        with staged_file(path, "checkpoint") as staging:
            torch.save(checkpoint, staging)
            size = staging.stat().st_size
        verify_written(path, "checkpoint", size)


def check_model(spec: str) -> None:
    """Fail with one line unless ``spec`` names a supported model: a hub id (its config must be reachable),
    a folder with config.json, or tiny://<family>. Reads the config only, never the weights."""
    config = load_config(spec)
    adapter_for(config.model_type, source=spec)


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist here (WANDB_API_KEY, or the netrc entry `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _loggers(trainer: Any) -> list[Any]:
    loggers = trainer.get("logger") if trainer is not None else None
    items = loggers if isinstance(loggers, list) else [loggers]
    return [lg for lg in items if getattr(lg, "class_path", None) and getattr(lg, "init_args", None) is not None]


def _offline_unless_logged_in(trainer: Any) -> None:
    """A WandbLogger asked to run online falls back to offline (with a note) when nobody is logged in."""
    for logger in _loggers(trainer):
        init_args = logger.init_args
        if not logger.class_path.endswith("WandbLogger") or init_args.get("offline"):
            continue
        if os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_logged_in():
            init_args["offline"] = True
            print("W&B: not logged in (no WANDB_API_KEY, no netrc entry): logging offline; "
                  "`wandb login` to log online next time, `wandb sync <run dir>` to upload this run.",
                  file=sys.stderr)


def _default_of(class_path: str, parameter: str) -> Any:
    """The default of ``parameter`` in the signature of the class at ``class_path`` (None if it has none)."""
    module, _, name = class_path.rpartition(".")
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    found = signature.parameters.get(parameter)
    return None if found is None or found.default is inspect.Parameter.empty else found.default


def _same_path(a: Any, b: Any) -> bool:
    return Path(str(a)).expanduser().absolute() == Path(str(b)).expanduser().absolute()


class VKVCLI(LightningCLI):
    """LightningCLI of vkvtrain: strict keys, one-line errors, safe checkpoints, one folder per run, and the
    resolved recipe handed to the module (it is stored in every checkpoint)."""

    run_dir: Path

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """LightningCLI's own constructor, which parses, builds and runs; a run refused before it wrote anything
        (bad data, a wrong value found while building) leaves no empty run folder behind."""
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            run = getattr(self, "run_dir", None)
            reserved_here = os.environ.get("LOCAL_RANK", "0") == "0"  # a DDP child only borrows its parent's
            if run is not None and reserved_here and run.is_dir() and not any(run.iterdir()):
                run.rmdir()
            raise

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise RecipeError(" ".join(line.strip() for line in str(error).splitlines() if line.strip())) from None
        if not self.config.get("subcommand"):
            return
        section = self.config[self.config.subcommand]
        ckpt_path = section.get("ckpt_path")
        if ckpt_path is None:
            return
        refuse_remote(ckpt_path)
        if ckpt_path == "last":
            root = section.trainer.get("default_root_dir") or DEFAULT_ROOT
            found = latest_checkpoint(root)
            if found is None:
                raise CheckpointError(f"--ckpt_path last: no run under {str(root)!r} has checkpoints/last.ckpt; "
                                      "pass the checkpoint's path.")
            section.ckpt_path = ckpt_path = str(found)
        if ckpt_path == "best":
            raise CheckpointError("--ckpt_path best means the best checkpoint of a fit in the same process; from "
                                  "the command line pass that checkpoint's path (<run folder>/checkpoints/...).")
        if ckpt_path not in LIGHTNING_NAMES:
            load_checkpoint_file(ckpt_path)  # refuses missing, truncated, foreign or code-carrying files now

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._recipe_yaml = self.parser.dump(self.config, skip_none=False, skip_validation=True)
        check_model(config.model.model)  # before any logger starts: no empty W&B runs
        trainer = config.trainer
        root = trainer.get("default_root_dir") or DEFAULT_ROOT
        self._refuse_other_output_keys(config, root)
        self.run_dir = run_dir_for_this_process(root)
        # Redirected for instantiation only: config.yaml records the recipe as given (see instantiate_classes).
        self._given = [(trainer, "default_root_dir", trainer.get("default_root_dir"))]
        trainer.default_root_dir = str(self.run_dir)
        for logger in _loggers(trainer):
            if "save_dir" in logger.init_args:
                self._given.append((logger.init_args, "save_dir", logger.init_args.get("save_dir")))
                logger.init_args["save_dir"] = str(self.run_dir)
        _offline_unless_logged_in(trainer)

    @staticmethod
    def _refuse_other_output_keys(config: Any, root: str) -> None:
        for logger in _loggers(config.trainer):
            save_dir = logger.init_args.get("save_dir")
            if save_dir is not None and save_dir != _default_of(logger.class_path, "save_dir") \
                    and not _same_path(save_dir, root):
                raise RecipeError(
                    f"{logger.class_path} save_dir={save_dir!r} differs from trainer.default_root_dir={root!r}; "
                    "every output of a run goes to <trainer.default_root_dir>/<run>/: remove save_dir."
                )
        callbacks = config.trainer.get("callbacks") or []
        for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
            init_args = getattr(callback, "init_args", None)
            if str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint") and init_args is not None \
                    and init_args.get("dirpath") is not None:
                raise RecipeError(
                    f"ModelCheckpoint dirpath={init_args.get('dirpath')!r}: checkpoints of a run go to "
                    "<trainer.default_root_dir>/<run>/checkpoints; remove dirpath (set trainer.default_root_dir)."
                )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        finally:
            for node, key, value in getattr(self, "_given", []):
                node[key] = value
        self.model.recipe = getattr(self, "_recipe_yaml", "")
        strategy = self.trainer.strategy
        if type(strategy).load_checkpoint is not Strategy.load_checkpoint:
            raise RecipeError(f"strategy {type(strategy).__name__} reads checkpoints its own way; vkvtrain runs "
                              "strategies that read through CheckpointIO (auto, ddp, ddp_spawn, single device).")
        if type(strategy.checkpoint_io) is not TorchCheckpointIO:
            raise RecipeError(f"checkpoint IO plugin {type(strategy.checkpoint_io).__name__} is not supported: "
                              "vkvtrain reads checkpoints with weights_only=True through its own; remove the plugin.")
        strategy.checkpoint_io = SafeCheckpointIO()
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(self.run_dir / "checkpoints")


def _parser_kwargs(subcommand_usage: bool) -> dict[str, Any]:
    common = {"exit_on_error": False, "allow_abbrev": False, "default_env": False}
    kwargs: dict[str, Any] = {**common, "prog": "python -m vkvtrain"}
    if subcommand_usage:
        for name in SUBCOMMANDS:
            kwargs[name] = {**common, "usage": f"python -m vkvtrain {name} RECIPE [--key value | key=value ...]"}
    return kwargs


def build_cli(argv: Sequence[str], run: bool = True) -> VKVCLI:
    """LightningCLI over argv (subcommand first when ``run``; with ``run=False`` a leading subcommand is
    dropped and the caller drives ``cli.trainer`` / ``cli.model`` / ``cli.datamodule`` itself)."""
    argv = list(argv)
    if not run and argv and argv[0] in SUBCOMMANDS:
        argv = argv[1:]
    with warnings.catch_warnings():
        # argv arrives already parsed by vkvtrain.cli; Lightning warns when args and sys.argv differ.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        try:
            return VKVCLI(
                VKVModule,
                VKVDataModule,
                args=shim_argv(argv),
                run=run,
                save_config_kwargs={"overwrite": "SLURM_JOB_ID" in os.environ},  # a requeued job's own folder
                parser_kwargs=_parser_kwargs(run),
                auto_configure_optimizers=False,
            )
        except MisconfigurationException as error:  # Lightning's word for a bad trainer configuration
            raise RecipeError(str(error)) from None


def _recipe_of(argv: Sequence[str]) -> str:
    shimmed = shim_argv(argv)
    for flag, value in zip(shimmed, shimmed[1:]):
        if flag in ("-c", "--config"):
            return str(Path(value).absolute())
    return "(no recipe)"


def _metric_rows(metrics: dict[str, float]) -> dict[str, str]:
    """One row per metric: per-layer metrics (``.../layer_L``) as one row of values in layer order."""
    rows: dict[str, str] = {}
    per_layer: dict[str, dict[int, float]] = {}
    for key in sorted(metrics):
        base, found, layer = key.rpartition("/layer_")
        if found and layer.lstrip("-").isdigit():
            per_layer.setdefault(base, {})[int(layer)] = metrics[key]
        else:
            rows[key] = f"{metrics[key]:.4f}"
    for base, values in per_layer.items():
        layers = sorted(values)
        rows[f"{base} [layers {' '.join(map(str, layers))}]"] = " ".join(f"{values[i]:.3f}" for i in layers)
    return rows


def _wandb_run_folder(trainer: Any) -> Path | None:
    """The W&B run folder of this run, after finishing the run so its files are complete; None without W&B."""
    if not any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        return None
    import wandb  # imported only by runs that log to W&B (a second or so)

    active = wandb.run
    if active is None:
        return None
    folder = Path(active.dir).parent  # <save_dir>/wandb/<offline-run-...>/files -> the run folder
    active.finish()
    return folder


def summarize(cli: VKVCLI, subcommand: str, recipe: str) -> Outcome | None:
    """Where a training run's outputs went and its final metrics (rank 0 only; None on other ranks)."""
    trainer = cli.trainer
    if not trainer.is_global_zero:
        return None
    run = cli.run_dir
    outputs = {"run folder": str(run)}
    if (run / "config.yaml").is_file():
        outputs["config"] = str(run / "config.yaml")
    checkpoint = None
    for callback in trainer.checkpoint_callbacks:
        for kind, path in (("last", getattr(callback, "last_model_path", "")),
                           ("best", getattr(callback, "best_model_path", ""))):
            if path and Path(path).is_file() and path not in outputs.values():
                outputs[f"checkpoint ({kind})"] = path
                checkpoint = checkpoint or path
    # trainer.log_dir is a collective (a broadcast under DDP): only rank 0 is here, so look in the run folder.
    for adapter in sorted(p for p in run.glob("**/peft_adapter_*") if p.is_dir()):
        apply_default_modes(adapter)  # peft's save_pretrained writes adapter_model.safetensors 0600
        outputs[f"peft adapter {adapter.name.rsplit('_', 1)[-1]}"] = str(adapter)
    next_steps: list[tuple[str, str]] = []
    wandb_folder = _wandb_run_folder(trainer)
    if wandb_folder is not None:
        outputs["W&B run"] = str(wandb_folder)
        if wandb_folder.name.startswith("offline-run-"):
            next_steps.append(("upload the W&B run", shlex.join([sys.executable, "-m", "wandb", "sync",
                                                                  str(wandb_folder)])))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    if subcommand == "fit" and checkpoint is not None:
        config = [str(EVAL_CONFIG)] if EVAL_CONFIG.is_file() else []  # eval/ ships with the repository
        evaluate = ["evaluate", *config, "--ckpt_path", checkpoint]
        if str(cli.model.model_name).startswith("tiny://"):
            evaluate += ["--data.source", "synthetic"]  # the hub's BLINK is for real models
        next_steps.insert(0, ("evaluate the checkpoint on BLINK", follow_up(*evaluate)))
        # the run's config.yaml is the recipe with every override of this command line
        resume_recipe = str(run / "config.yaml") if (run / "config.yaml").is_file() else recipe
        next_steps.insert(1, ("resume training from it", follow_up("fit", resume_recipe, "--ckpt_path", checkpoint)))
    return Outcome(title=f"{subcommand} {recipe}", outputs=outputs, figures=_metric_rows(metrics), next=next_steps)


def run_recipe(subcommand: str, argv: Sequence[str]) -> Outcome | None:
    """Parse, build and run one LightningCLI subcommand; its outcome."""
    cli = build_cli([subcommand, *argv])
    return summarize(cli, subcommand, _recipe_of(argv))


def fit(argv: Sequence[str]) -> Outcome | None:
    """Train the interventions of a recipe."""
    return run_recipe("fit", argv)


def validate(argv: Sequence[str]) -> Outcome | None:
    """Validation metrics of a recipe (``--ckpt_path`` for a trained checkpoint)."""
    return run_recipe("validate", argv)


def test(argv: Sequence[str]) -> Outcome | None:
    """Test metrics of a recipe (``--ckpt_path`` for a trained checkpoint)."""
    return run_recipe("test", argv)

