"""What a command leaves behind, printed as its last lines: where its outputs went, its headline figures, and
commands to run next that work when pasted (they name this interpreter, not a bare ``python``)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field


def follow_up(*args: str) -> str:
    """A pasteable ``vkvtrain`` command line run by this interpreter (the venv's python when run from one)."""
    return shlex.join([sys.executable, "-m", "vkvtrain", *args])


@dataclass
class Outcome:
    """The closing summary of one command.

    Attributes:
        title: one line naming what ran (e.g. "fit recipes/tiny/prefix.yaml").
        outputs: label -> path of everything the command wrote, in the order worth reading.
        figures: label -> the headline numbers, already formatted.
        next: follow-up commands (see :func:`follow_up`), each with a one-line purpose.
    """

    title: str
    outputs: dict[str, str] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    next: list[tuple[str, str]] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"== {self.title}"]
        width = max((len(k) for k in (*self.outputs, *self.figures)), default=0)
        lines += [f"  {label:<{width}}  {value}" for label, value in self.outputs.items()]
        lines += [f"  {label:<{width}}  {value}" for label, value in self.figures.items()]
        for purpose, command in self.next:
            lines += [f"  {purpose}:", f"    {command}"]
        return "\n".join(lines)
