"""``python -m vkvtrain <command> ...``: one table of typed entry functions, one parser mechanism, one error handler.

A command is one line of :data:`COMMANDS`: where its entry function lives (imported only when the command runs),
one line of purpose, and its parser: ``typed`` (jsonargparse over the entry's signature and config dataclass,
see vkvtrain.arguments) or ``lightning`` (LightningCLI over the recipe, see vkvtrain.training_cli). A value that
is itself a table makes a command with sub-commands (``organism build``). Every entry returns an
:class:`~vkvtrain.outcome.Outcome` that is printed last: where the outputs went and the headline figures.

A new command is one more line, e.g. ``"compare": Command("vkvtrain.evaluation.compare:compare", "...")`` for an
entry ``def compare(config: CompareConfig) -> Outcome``, or ``"organism": {"build": Command(...)}`` for
``python -m vkvtrain organism build``.

Bad input ends a command with exit code 2 and one line on stderr, ``vkvtrain <command>: <what and how to fix
it>``; third-party noise is hidden (vkvtrain.quiet) unless ``--verbose`` is given anywhere on the line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from vkvtrain.arguments import parse_call
from vkvtrain.entry_points import resolve_entry
from vkvtrain.errors import VKVError
from vkvtrain.outcome import Outcome
from vkvtrain.quiet import quiet

PROG = "python -m vkvtrain"


@dataclass(frozen=True)
class Command:
    """One command: ``entry`` = "package.module:function"."""

    entry: str
    purpose: str
    parser: Literal["typed", "lightning"] = "typed"


Table = dict[str, Union[Command, "Table"]]

COMMANDS: Table = {
    "fit": Command("vkvtrain.training_cli:fit", "train a recipe's interventions (LightningCLI: RECIPE.yaml)", "lightning"),
    "validate": Command("vkvtrain.training_cli:validate", "validation metrics of a recipe (optionally a checkpoint)",
                        "lightning"),
    "test": Command("vkvtrain.training_cli:test", "test metrics of a recipe (optionally a checkpoint)", "lightning"),
    "evaluate": Command("vkvtrain.evaluation.cli:evaluate", "BLINK accuracy and the probe-vs-output surfacing gap"),
    "probe": Command("vkvtrain.probes.cli:probe", "layer x task probe table, reports and heatmaps"),
    "compare": Command("vkvtrain.evaluation.compare:compare",
                       "evaluate runs side by side: paired bootstrap intervals and McNemar p-values"),
    "kv": Command("vkvtrain.kv_command:kv", "write one prompt's image keys/values to a safetensors file"),
    "tiny": Command("vkvtrain.tiny_command:tiny", "write a seeded tiny random checkpoint of a supported family"),
    "organism": {
        "build": Command("vkvtrain.organism.build:build_command",
                         "train the model organism on CPU (a small MLM with a planted, measured surfacing gap)"),
        "experiment": Command("vkvtrain.organism.experiment:experiment",
                              "every intervention on the organism: fit, evaluate, compare with the base (make organism)"),
    },
    "demo": Command("vkvtrain.demo:demo", "the tiny prefix recipe end to end on CPU, metrics before/after (make demo)"),
}

_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process (\d+)\.\nOriginal Traceback")


def one_line(error: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the worker's whole
    traceback as its message (torch's ExceptionWrapper); its own message is that traceback's last line."""
    text = str(error)
    worker = _WORKER.match(text)
    if worker:
        last = text.rstrip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
        return f"{message} (in DataLoader worker process {worker.group(1)})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def usage(table: Table, path: Sequence[str]) -> str:
    """The command list of ``table`` (the top level, or a command with sub-commands)."""
    name = " ".join([PROG, *path])
    width = max(len(k) for k in table)
    lines = [f"usage: {name} <command> [arguments]   ({name} <command> --help for its arguments)", "",
             "commands:"]
    for key, value in table.items():
        purpose = value.purpose if isinstance(value, Command) else "sub-commands: " + ", ".join(value)
        lines.append(f"  {key:<{width}}  {purpose}")
    lines.append("\n--verbose (anywhere) shows third-party output that is hidden by default.")
    return "\n".join(lines)


def select(argv: Sequence[str]) -> tuple[list[str], Command | Table, list[str]]:
    """Walk the table down ``argv``: (command path, the Command or the sub-table reached, remaining argv)."""
    path: list[str] = []
    node: Command | Table = COMMANDS
    rest = list(argv)
    while isinstance(node, dict) and rest and rest[0] in node:
        path.append(rest[0])
        node = node[rest.pop(0)]
    return path, node, rest


def resolve(entry: str) -> Callable[..., Outcome | None]:
    function: Callable[..., Outcome | None] = resolve_entry(entry)
    return function


def invoke(command: Command, name: str, argv: Sequence[str]) -> Outcome | None:
    """Parse ``argv`` the command's way and call its entry function."""
    entry = resolve(command.entry)
    if command.parser == "lightning":
        return entry(list(argv))
    args, kwargs = parse_call(entry, argv, f"{PROG} {name}")
    return entry(*args, **kwargs)


def _exit_code(stop: SystemExit) -> int:
    return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of ``python -m vkvtrain`` and the ``vkvtrain`` script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    path, node, rest = select(args)
    if isinstance(node, dict):
        if rest and rest[0] not in ("-h", "--help"):
            where = " ".join(["vkvtrain", *path])
            print(f"{where}: unknown command {rest[0]!r}; choose one of {', '.join(node)} "
                  f"(`{PROG} {' '.join(path)} --help`).".replace("  ", " "), file=sys.stderr)
            return 2
        print(usage(node, path), file=sys.stdout if rest else sys.stderr)
        return 0 if rest else 2
    name = " ".join(path)
    outcome: Any = None
    with quiet(verbose):
        try:
            outcome = invoke(node, name, rest)
        except VKVError as error:
            print(f"vkvtrain {name}: {one_line(error)}", file=sys.stderr)
            return 2
        except SystemExit as stop:  # --help / --print_config
            return _exit_code(stop)
    if isinstance(outcome, Outcome):
        print(outcome.render())
    return 0
