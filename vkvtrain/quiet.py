"""Known-harmless third-party output, hidden (or shown once) while a command runs; ``--verbose`` shows it all.

Each entry names one message precisely: a logger and a message pattern, a warning category + message + module,
or one line that a library prints to stderr itself. Anything not listed here is shown as it is.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from transformers.utils import logging as hf_logging

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class LogNoise:
    """A record of logger ``logger`` whose message matches ``pattern`` (re.search); ``once`` keeps the first."""

    logger: str
    pattern: str
    once: bool = False


@dataclass(frozen=True)
class WarningNoise:
    """A warning of ``category`` whose message starts with ``message`` (a regex), raised from ``module``."""

    category: type[Warning]
    message: str
    module: str
    once: bool = False


@dataclass(frozen=True)
class StderrNoise:
    """A line a library writes straight to stderr (ANSI colours ignored), matched with re.search."""

    pattern: str


NOISE: tuple[LogNoise | WarningNoise | StderrNoise, ...] = (
    # bitsandbytes: an optional CPU kernel package is absent; the built-in kernel is used (every LoRA run).
    LogNoise("bitsandbytes.backends.cpu.ops", r"^Failed to load CPU gemm_4bit_forward from kernels-community"),
    # bitsandbytes: one line per 8-bit layer and step; its content is the same every time.
    LogNoise("bitsandbytes.autograd._functions", r"^MatMul8bitLt: inputs will be cast from", once=True),
    # Lightning: advertisements for other packages.
    LogNoise("lightning.pytorch.utilities.rank_zero", r"^💡 Tip: For seamless cloud"),
    LogNoise("lightning.fabric.utilities.rank_zero", r"^💡 Tip: For seamless cloud"),
    # Lightning's WandbLogger passes anonymous=None, which wandb 0.2x+ warns about; git metadata of a run
    # folder that is not a repository. vkvtrain prints the run folder and its sync command itself.
    StderrNoise(r"^wandb: WARNING The anonymous setting has no effect"),
    StderrNoise(r"^wandb: WARNING git root .* does not exist"),
    StderrNoise(r"^wandb: Tracking run with wandb version"),
    StderrNoise(r"^wandb: W&B syncing is set to `offline`"),
    StderrNoise(r"^wandb: Run data is saved locally in"),
    StderrNoise(r"^wandb: View this run in the terminal with `wandb leet`"),
    # Deprecations inside the libraries themselves (nothing vkvtrain calls), fixed upstream in later releases.
    WarningNoise(FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\."),
    WarningNoise(FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities"),
    # A resumed run writes into its own new folder (vkvtrain.run_dir), so its checkpoint callback starts its own
    # top-k bookkeeping there: expected, not a problem.
    WarningNoise(UserWarning, r"The dirpath has changed from", r"lightning\.pytorch\.callbacks\.model_checkpoint"),
)
# wandb's own switch for its informational banners (version header, history/summary footer, log folder);
# its warnings and errors still show. Set only while a command runs, and only if the user has not set it.
WANDB_QUIET = ("WANDB_QUIET", "true")


class _OnceOrDrop(logging.Filter):
    """Drops the listed records of one logger (after the first, for ``once`` entries)."""

    def __init__(self, entries: list[LogNoise]) -> None:
        super().__init__()
        self.entries = [(re.compile(e.pattern), e.once) for e in entries]
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for pattern, once in self.entries:
            if pattern.search(message):
                if once and pattern.pattern not in self.seen:
                    self.seen.add(pattern.pattern)
                    return True
                return False
        return True


class _FilteredStderr:
    """sys.stderr minus the listed lines (each arrives as one write: wandb prints through click.echo).

    Handlers created while it is installed (Lightning adds one on import) keep a reference to it; once the
    ``with`` ends it filters nothing and writes to whatever sys.stderr is then, as they would have.
    """

    def __init__(self, stream: TextIO, patterns: list[str]) -> None:
        self._stream = stream
        self._patterns = [re.compile(p) for p in patterns]
        self.active = True

    def _target(self) -> TextIO:
        return self._stream if self.active or sys.stderr is self else sys.stderr

    def write(self, text: str) -> int:
        plain = _ANSI.sub("", text).strip()
        if self.active and plain and all(any(p.search(line) for p in self._patterns) for line in plain.splitlines()):
            return len(text)
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


@contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Hide :data:`NOISE` inside the ``with`` (nothing is hidden when ``verbose``)."""
    if verbose:
        yield
        return
    by_logger: dict[str, list[LogNoise]] = {}
    for entry in NOISE:
        if isinstance(entry, LogNoise):
            by_logger.setdefault(entry.logger, []).append(entry)
    filters = {name: _OnceOrDrop(entries) for name, entries in by_logger.items()}
    for name, log_filter in filters.items():
        logging.getLogger(name).addFilter(log_filter)
    stderr = sys.stderr
    filtered = _FilteredStderr(stderr, [e.pattern for e in NOISE if isinstance(e, StderrNoise)])
    sys.stderr = filtered
    wandb_quiet_given = WANDB_QUIET[0] in os.environ
    os.environ.setdefault(*WANDB_QUIET)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # weight-loading bars of every model load
    try:
        with warnings.catch_warnings():
            for entry in NOISE:
                if isinstance(entry, WarningNoise):
                    warnings.filterwarnings("once" if entry.once else "ignore", message=entry.message,
                                            category=entry.category, module=entry.module)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if not wandb_quiet_given:
            os.environ.pop(WANDB_QUIET[0], None)
        filtered.active = False
        sys.stderr = stderr
        for name, log_filter in filters.items():
            logging.getLogger(name).removeFilter(log_filter)
