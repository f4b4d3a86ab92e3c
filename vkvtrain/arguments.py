"""argv -> the typed arguments of a command's entry function, parsed by jsonargparse the same way for every
command (fit/validate/test parse through LightningCLI, which is jsonargparse too).

An entry function's parameters are its command's arguments. A first parameter typed with a dataclass
contributes that dataclass's fields as top-level keys (``--data.root``, ``--probe.pck_alpha``); further
parameters are further keys; parameters without a default are positional (``kv MODEL``, ``tiny FAMILY``).
Accepted by every command:

    CONFIG.yaml                  first argument of a command without positional parameters (= -c CONFIG.yaml)
    A B C ...                    for a config dataclass naming a list field in ``POSITIONAL`` (compare's
                                 ``runs``): the bare arguments before the first option are that list
    -c/--config FILE             a YAML config; later arguments override it
    --key value | --key=value | key=value     dotted keys (``--data.fewshot.n 2``, ``data.fewshot.n=2``)
    --list_key a --list_key b    a list of plain values by repeating its key (or as a YAML list: ``[a, b]``)

A key prefix is not a key (no abbreviations). Unknown keys and bad values raise RecipeError naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from vkvtrain.errors import RecipeError, VKVError

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
_NUMBER = re.compile(r"^-\d")
_SCALARS = (str, int, float)


def config_parameter(entry: Callable[..., Any]) -> inspect.Parameter | None:
    """The entry's first parameter when it is typed with a dataclass (its fields become top-level keys)."""
    params = list(inspect.signature(entry).parameters.values())
    if not params:
        return None
    hint = typing.get_type_hints(entry).get(params[0].name)
    return params[0] if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def positional_list(entry: Callable[..., Any]) -> str | None:
    """The list field of the entry's config dataclass that takes the command's bare arguments, if it names one
    (``POSITIONAL: ClassVar[str] = "runs"``)."""
    config = config_parameter(entry)
    if config is None:
        return None
    name = getattr(typing.get_type_hints(entry)[config.name], "POSITIONAL", None)
    return str(name) if name else None


def positional_names(entry: Callable[..., Any]) -> list[str]:
    """Parameters without a default (other than the config dataclass): the command's positional arguments."""
    skip = config_parameter(entry)
    return [p.name for p in inspect.signature(entry).parameters.values()
            if p.default is inspect.Parameter.empty and (skip is None or p.name != skip.name)]


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def list_keys(entry: Callable[..., Any]) -> dict[str, type]:
    """Dotted keys typed ``list[<plain value>]`` -> the element's Python type (``*`` matches any dict key)."""
    found: dict[str, type] = {}

    def element(hint: Any) -> type | None:
        hint = _unwrap_optional(hint)
        if typing.get_origin(hint) is not list:
            return None
        (item,) = typing.get_args(hint) or (Any,)
        if typing.get_origin(item) is Literal:
            return str
        return item if item in _SCALARS else None

    def walk(hints: dict[str, Any], prefix: str) -> None:
        for name, hint in hints.items():
            key = f"{prefix}{name}"
            if (item := element(hint)) is not None:
                found[key] = item
            inner = _unwrap_optional(hint)
            if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                walk(typing.get_type_hints(inner), key + ".")
            elif typing.get_origin(inner) is dict:
                value = typing.get_args(inner)[1] if typing.get_args(inner) else Any
                if isinstance(value, type) and dataclasses.is_dataclass(value):
                    walk(typing.get_type_hints(value), key + ".*.")

    hints = typing.get_type_hints(entry)
    hints.pop("return", None)
    config = config_parameter(entry)
    if config is not None:
        walk(typing.get_type_hints(hints.pop(config.name)), "")
    walk(hints, "")
    return found


def _list_key(flag: str, keys: dict[str, type]) -> str | None:
    name = flag[2:]
    for key in keys:
        if re.fullmatch(re.escape(key).replace(r"\*", r"[^.]+"), name):
            return key
    return None


def normalise(argv: Sequence[str], entry: Callable[..., Any]) -> list[str]:
    """Rewrite the conveniences above into jsonargparse's own syntax."""
    tokens = list(argv)
    out: list[str] = []
    bare = lambda token: not token.startswith("-") and not OVERRIDE.match(token)  # noqa: E731
    if (listed := positional_list(entry)) is not None:
        config = config_parameter(entry)
        assert config is not None
        fields = {f.name for f in dataclasses.fields(typing.get_type_hints(entry)[config.name])}
        values = []
        # a bare ``label=folder`` is a positional value unless ``label`` is one of the config's keys
        while tokens and not tokens[0].startswith("-") and tokens[0].partition("=")[0].split(".")[0] not in fields:
            values.append(tokens.pop(0))
        if values:
            out.append(f"--{listed}={json.dumps(values)}")
    elif not positional_names(entry) and tokens and bare(tokens[0]):
        out += ["--config", tokens.pop(0)]
    keys = list_keys(entry)
    collected: dict[str, tuple[int, str, list[str]]] = {}  # flag -> (position in out, key, raw values)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if OVERRIDE.match(token):
            token = "--" + token
        flag, has_inline, inline = token.partition("=")
        takes_next = (token.startswith("--") and not has_inline and i + 1 < len(tokens)
                      and (not tokens[i + 1].startswith("-") or _NUMBER.match(tokens[i + 1]) is not None))
        value = inline if has_inline else (tokens[i + 1] if takes_next else None)
        key = _list_key(flag, keys) if flag.startswith("--") else None
        if key is not None and value is not None and not value.lstrip().startswith("["):
            if flag not in collected:
                collected[flag] = (len(out), key, [])
                out.append("")  # placeholder, filled below
            collected[flag][2].append(value)
        elif has_inline or not takes_next:
            out.append(token)
        else:
            out += [token, tokens[i + 1]]
        i += 1 if has_inline or not takes_next else 2
    for flag, (position, key, values) in collected.items():
        out[position] = f"{flag}={json.dumps([_typed(v, keys[key], flag) for v in values])}"
    return out


def _typed(value: str, kind: type, flag: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise RecipeError(f"{flag} {value!r} is not a {kind.__name__}.") from None


def build_parser(entry: Callable[..., Any], prog: str) -> ArgumentParser:
    """jsonargparse parser of ``entry`` (description and per-key help from its docstring)."""
    doc = inspect.getdoc(entry) or ""
    description = doc.split("\n\nArgs:")[0].strip()
    listed = positional_list(entry)
    positionals = (f"{listed.upper()}..." if listed else
                   " ".join(name.upper() for name in positional_names(entry)) or "[CONFIG.yaml]")
    parser = ArgumentParser(
        prog=prog, description=description, usage=f"{prog} {positionals} [--key value | key=value ...]",
        exit_on_error=False, allow_abbrev=False, default_env=False,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile,
                        help="YAML config; keys given after it override it")
    config = config_parameter(entry)
    skip: set[str | int] = set()
    if config is not None:
        parser.add_class_arguments(typing.get_type_hints(entry)[config.name], nested_key=None, as_group=False)
        skip = {config.name}
    parser.add_function_arguments(entry, nested_key=None, as_group=False, as_positional=True, skip=skip)
    return parser


def parse_call(entry: Callable[..., Any], argv: Sequence[str], prog: str) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) to call ``entry`` with, from ``argv``; RecipeError on any parsing or validation error."""
    parser = build_parser(entry, prog)
    try:
        namespace = parser.parse_args(normalise(argv, entry))
        values = parser.instantiate(namespace).as_dict()
    except ArgumentError as error:
        raise RecipeError(" ".join(line.strip() for line in str(error).splitlines() if line.strip())) from None
    except (ValueError, TypeError) as error:  # raised by the dataclasses' own validation while instantiating
        if isinstance(error, VKVError):
            raise
        raise RecipeError(str(error)) from error
    values.pop("config", None)
    values.pop("__path__", None)
    config = config_parameter(entry)
    args: list[Any] = []
    if config is not None:
        cls = typing.get_type_hints(entry)[config.name]
        names = {f.name for f in dataclasses.fields(cls)}
        args.append(cls(**{k: v for k, v in values.items() if k in names}))
        values = {k: v for k, v in values.items() if k not in names}
    return args, values
