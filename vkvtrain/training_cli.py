"""`python -m vkvtrain fit|validate|test RECIPE.yaml [overrides]`: LightningCLI over VKVModule + VKVDataModule.

Accepted forms (all end up as LightningCLI arguments):
    fit recipes/prefix.yaml                      positional recipe (shimmed to ``-c recipes/prefix.yaml``)
    fit -c recipes/prefix.yaml --trainer.max_steps=5
    fit recipes/tiny/prefix.yaml trainer.devices=2 trainer.strategy=ddp   bare dotted overrides get ``--``
    fit recipes/prefix.yaml --print_config
The recipe is parsed and type-checked before anything is built, so a typo in a key fails at once, naming the
key, and no model is loaded.
"""

from __future__ import annotations

import netrc
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.cli import LightningCLI

from vkvtrain.errors import VKVError

SUBCOMMANDS = ("fit", "validate", "test")
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


class VKVCLI(LightningCLI):
    """LightningCLI that hands the resolved recipe to the module (it is stored in every checkpoint)."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _offline_unless_logged_in(config.get("trainer"))
        self._recipe_yaml = self.parser.dump(self.config, skip_none=False, skip_validation=True)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.model.recipe = getattr(self, "_recipe_yaml", "")


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist here (WANDB_API_KEY, or the netrc entry `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _offline_unless_logged_in(trainer: Any) -> None:
    """A WandbLogger asked to run online falls back to offline (with a note) when nobody is logged in."""
    loggers = getattr(trainer, "logger", None) if trainer is not None else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        class_path = getattr(logger, "class_path", "") or ""
        init_args = getattr(logger, "init_args", None)
        if not class_path.endswith("WandbLogger") or init_args is None or init_args.get("offline"):
            continue
        if os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_logged_in():
            init_args["offline"] = True
            print("W&B: not logged in (no WANDB_API_KEY, no netrc entry): logging offline; "
                  "`wandb login` to log online next time, `wandb sync <run dir>` to upload this run.",
                  file=sys.stderr)


def build_cli(argv: Sequence[str], run: bool = True) -> VKVCLI:
    """LightningCLI over argv (subcommand first when ``run``; with ``run=False`` a leading subcommand is
    dropped and the caller drives ``cli.trainer`` / ``cli.model`` / ``cli.datamodule`` itself)."""
    from vkvtrain.datamodule import VKVDataModule
    from vkvtrain.module import VKVModule

    argv = list(argv)
    if not run and argv and argv[0] in SUBCOMMANDS:
        argv = argv[1:]

    with warnings.catch_warnings():
        # argv arrives already parsed by vkvtrain.cli; Lightning warns when args and sys.argv differ.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return VKVCLI(
            VKVModule,
            VKVDataModule,
            args=shim_argv(argv),
            run=run,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_env": False},
            auto_configure_optimizers=False,
        )


def _missing_checkpoint(argv: Sequence[str]) -> str | None:
    """The --ckpt_path value when it names a file that does not exist (checked before anything loads)."""
    for i, token in enumerate(argv):
        value = None
        if token.startswith("--ckpt_path="):
            value = token.split("=", 1)[1]
        elif token == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
        if value and value not in ("last", "best", "hpc", "registry", "null") and "://" not in value:
            if not Path(value).expanduser().exists():
                return value
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of ``python -m vkvtrain fit|validate|test``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        print(f"usage: python -m vkvtrain {{{','.join(SUBCOMMANDS)}}} RECIPE.yaml [--key=value ...]", file=sys.stderr)
        return 2
    missing = _missing_checkpoint(argv)
    if missing:
        print(f"error: --ckpt_path {missing!r} does not exist; pass a .ckpt written by `vkvtrain fit` "
              "(e.g. <default_root_dir>/.../checkpoints/last.ckpt) or 'last'.", file=sys.stderr)
        return 2
    try:
        build_cli(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except VKVError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0
