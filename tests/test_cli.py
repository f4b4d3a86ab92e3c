"""`python -m vkvtrain`: the command table, the one parser mechanism and the one error handler."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import vkvtrain.cli as cli
from helpers_cli import WorldConfig, build
from vkvtrain.arguments import normalise, parse_call
from vkvtrain.errors import DatasetError, RecipeError
from vkvtrain.quiet import quiet


def _leaves(table: cli.Table, path: tuple[str, ...] = ()) -> list[tuple[str, cli.Command]]:
    found = []
    for name, node in table.items():
        if isinstance(node, dict):
            found += _leaves(node, (*path, name))
        else:
            found.append((" ".join((*path, name)), node))
    return found


def test_top_level_help_lists_every_command(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m vkvtrain <command>")
    for name, command in cli.COMMANDS.items():
        assert f"  {name}" in out
        if isinstance(command, cli.Command):
            assert command.purpose in out
    assert cli.main([]) == 2 and "commands:" in capsys.readouterr().err
    assert cli.main(["trian"]) == 2
    assert capsys.readouterr().err.startswith("vkvtrain: unknown command 'trian'; choose one of fit, validate")


@pytest.mark.parametrize("name, command", _leaves(cli.COMMANDS))
def test_every_command_has_a_help_with_purpose_and_usage(name, command, capsys) -> None:
    """Each entry resolves; its --help states its purpose and arguments (usage first)."""
    assert callable(cli.resolve(command.entry))
    assert cli.main([*name.split(), "--help"]) == 0
    out = capsys.readouterr().out
    positionals = {"fit": "RECIPE", "validate": "RECIPE", "test": "RECIPE", "kv": "MODEL", "tiny": "FAMILY",
                   "compare": "RUNS..."}
    assert out.startswith(f"usage: python -m vkvtrain {name} {positionals.get(name, '[CONFIG.yaml]')}")
    if command.parser == "typed":
        doc = (cli.resolve(command.entry).__doc__ or "").split("\n")[0]
        assert " ".join(doc.split()) in " ".join(out.split())


def test_tiny_help_lists_the_families(capsys) -> None:
    from vkvtrain.models.registry import families

    assert cli.main(["tiny", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"the model family: {', '.join(families())}" in out


def test_a_command_with_sub_commands_is_one_table_line(monkeypatch, capsys) -> None:
    monkeypatch.setitem(cli.COMMANDS, "organism", {"build": cli.Command("helpers_cli:build", "build a world")})
    assert cli.main(["organism", "build", "--size", "3", "seed=7", "--shapes", "a", "--shapes", "b"]) == 0
    out = capsys.readouterr().out
    assert "== organism build" in out and "size    3" in out and "shapes  a,b" in out and "seed    7" in out
    assert cli.main(["organism", "--help"]) == 0 and "build  build a world" in capsys.readouterr().out
    assert cli.main(["organism", "wreck"]) == 2
    assert capsys.readouterr().err.startswith("vkvtrain organism: unknown command 'wreck'; choose one of build")
    assert cli.main(["organism", "build", "--sizes", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vkvtrain organism build: ") and "--sizes" in err and len(err.splitlines()) == 1


def test_argument_forms_all_reach_the_same_values(tmp_path) -> None:
    config = tmp_path / "world.yaml"
    config.write_text("size: 9\nshapes: [square]\n")
    forms = [
        [str(config), "--size", "5"],                 # positional config (the entry has no positional parameter)
        ["-c", str(config), "--size=5"],
        ["--config", str(config), "size=5"],          # bare dotted override
    ]
    parsed = [parse_call(build, argv, "p") for argv in forms]
    assert all(p == ([WorldConfig(size=5, shapes=["square"])], {"seed": 0}) for p in parsed)
    assert parse_call(build, ["--shapes", "[x, y]"], "p")[0][0].shapes == ["x", "y"]  # a YAML list
    assert parse_call(build, ["--shapes", "x", "--shapes=y"], "p")[0][0].shapes == ["x", "y"]  # repetition
    assert parse_call(build, ["--shapes", "x"], "p")[0][0].shapes == ["x"]  # one value = a one-item list
    for bad, named in ((["--siz", "3"], "--siz"), (["--size", "big"], "size"), ([str(tmp_path / "no.yaml")], "no.yaml")):
        with pytest.raises(RecipeError, match=named):
            parse_call(build, bad, "p")


def test_tiny_reads_a_config_file_and_overrides(tmp_path) -> None:
    from vkvtrain.tiny_command import tiny

    config = tmp_path / "tiny.yaml"
    config.write_text(f"family: qwen2_5_vl\nout: {tmp_path / 'a'}\nsize: mid\n")
    assert parse_call(tiny, ["-c", str(config), "size=tiny"], "p") == ([], {
        "family": "qwen2_5_vl", "out": str(tmp_path / "a"), "size": "tiny"})
    assert parse_call(tiny, ["llava_next", "--config", str(config)], "p")[1]["family"] == "qwen2_5_vl"  # file last
    with pytest.raises(RecipeError, match="size"):
        parse_call(tiny, ["llava_next", "--size", "huge"], "p")


def test_normalise_keeps_negative_numbers_as_values() -> None:
    from vkvtrain.evaluation.cli import evaluate

    assert normalise(["c.yaml", "--probes.probe_layer", "-1", "data.limit=2"], evaluate) == [
        "--config", "c.yaml", "--probes.probe_layer", "-1", "--data.limit=2"]


class _Failing(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DatasetError(f"row {index} of data.train is broken; fix it.")


def test_error_from_a_dataloader_worker_is_one_line() -> None:
    """torch re-raises a worker's error with the worker's whole traceback as its message; one_line recovers the
    worker's own message."""
    with pytest.raises(DatasetError) as caught:
        next(iter(DataLoader(_Failing(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)  # what torch hands back
    assert cli.one_line(caught.value) == "row 0 of data.train is broken; fix it. (in DataLoader worker process 0)"
    assert cli.one_line(RecipeError('Parser key "x":\n  Expected an int')) == 'Parser key "x": Expected an int'


def test_verbose_is_accepted_anywhere_and_shows_hidden_noise(capsys, caplog) -> None:
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    message = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'."
    for verbose in (False, True):
        caplog.clear()
        with quiet(verbose):
            noisy.warning(message)
        assert (message in caplog.messages) is verbose
    assert cli.main(["tiny", "--verbose", "--help"]) == 0 and "FAMILY" in capsys.readouterr().out


def test_quiet_hides_exactly_the_listed_messages(capsys, caplog) -> None:
    """Precise filters: the listed message (once, for once-entries) goes; its neighbours stay."""
    matmul = logging.getLogger("bitsandbytes.autograd._functions")
    with quiet():
        for _ in range(3):
            matmul.warning("MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization")
        matmul.warning("MatMul8bitLt: something new")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").warning("💡 Tip: For seamless cloud uploads, try x")
        sys.stderr.write("wandb: WARNING The anonymous setting has no effect and will be removed\n")
        sys.stderr.write("wandb: WARNING something that matters\n")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with quiet():  # nested inside the recorder: the listed deprecation is dropped, another is kept
                warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                                       FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
                warnings.warn_explicit("`something_else` is deprecated.", FutureWarning, "modeling_utils.py", 2,
                                       module="transformers.modeling_utils")
    logged = caplog.messages
    assert sum("MatMul8bitLt: inputs will be cast" in m for m in logged) == 1
    assert "MatMul8bitLt: something new" in logged and not any("Tip" in m for m in logged)
    err = capsys.readouterr().err
    assert "anonymous setting" not in err and "wandb: WARNING something that matters" in err
    assert [str(w.message) for w in seen] == ["`something_else` is deprecated."]


def test_every_benchmark_pins_its_thread_count() -> None:
    """Ratios only reproduce with a fixed thread count (DESIGN.md): each script calls torch.set_num_threads."""
    import ast
    from pathlib import Path

    scripts = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))
    assert len(scripts) >= 4
    for script in scripts:
        calls = [node for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr == "set_num_threads"]
        assert calls, f"{script.name} does not pin its thread count"
