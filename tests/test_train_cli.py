"""The fit/validate/test entry: positional recipe shim, overrides, typo errors (and wrong model names) before any
model loads or logger starts, one-line errors, the closing summary."""

from __future__ import annotations

import os
import re
import shlex
import stat
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers_train import REPO, TINY_PREFIX, tiny_recipe
from vkvtrain.cli import main
from vkvtrain.training_cli import shim_argv


def test_shim_argv() -> None:
    assert shim_argv(["fit", "r.yaml", "trainer.devices=2", "--model.learning_rate=1"]) == [
        "fit", "-c", "r.yaml", "--trainer.devices=2", "--model.learning_rate=1"]
    assert shim_argv(["fit", "-c", "r.yaml", "--ckpt_path", "last.ckpt"]) == ["fit", "-c", "r.yaml", "--ckpt_path", "last.ckpt"]
    assert shim_argv(["validate", "--config", "a.yml"]) == ["validate", "--config", "a.yml"]


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_positional_and_dash_c_resolve_to_the_same_recipe(capsys, command) -> None:
    outputs = []
    for argv in ([command, str(TINY_PREFIX), "trainer.max_steps=7", "--model.learning_rate=0.3"],
                 [command, "-c", str(TINY_PREFIX), "--trainer.max_steps", "7", "model.learning_rate=0.3"],
                 [command, "--config", str(TINY_PREFIX), "--trainer.max_steps=7", "--model.learning_rate", "0.3"]):
        assert main([*argv, "--print_config"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    config = yaml.safe_load(outputs[0])
    assert config["trainer"]["max_steps"] == 7 and config["model"]["learning_rate"] == 0.3
    assert config["model"]["interventions"][0]["init_args"]["num_tokens"] == 4


@pytest.mark.parametrize("key, typo", [("model.learning_rate", "lerning_rate"), ("num_tokens", "num_tokns"),
                                        ("data.batch_size", "batchsize")])
def test_recipe_typo_fails_before_model_loads_naming_the_key(tmp_path, capsys, monkeypatch, key, typo) -> None:
    import vkvtrain.models.loading as loading

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was validated")

    monkeypatch.setattr(loading, "load_mlm", no_load)
    text = tiny_recipe(tmp_path).read_text().replace(key.rsplit(".", 1)[-1] + ":", typo + ":", 1)
    assert typo in text
    (tmp_path / "typo.yaml").write_text(text)
    assert main(["fit", str(tmp_path / "typo.yaml")]) == 2
    err = capsys.readouterr().err
    assert typo in err and err.startswith("vkvtrain fit: ") and len(err.strip().splitlines()) == 1  # no usage dump


@pytest.mark.parametrize("argv, named", [
    (["--model.learning_rat", "0.1"], "--model.learning_rat"),           # a prefix of learning_rate is no key
    (["--trainer.max_step=3"], "--trainer.max_step"),
    (["--trainer.max_steps", "many"], "trainer.max_steps"),
    (["--data.batch_size", "0"], "data.batch_size must be >= 1"),
])
def test_bad_keys_and_values_are_one_line_errors(tmp_path, capsys, argv, named) -> None:
    assert main(["fit", str(tiny_recipe(tmp_path)), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vkvtrain fit: ") and named in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "run").glob("*"))  # nothing was started: no run folder, no W&B files


@pytest.mark.parametrize("model, reason", [
    ("tiny://gpt2", "unknown tiny checkpoint"),
    ("/no/such/folder", "not a model folder"),
    ("not a//hub id", "cannot load a model config"),
])
def test_wrong_model_fails_before_any_logger_starts(tmp_path, capsys, model, reason) -> None:
    """No run folder and no (empty) W&B run: the model name is checked before the trainer and its logger exist."""
    assert main(["fit", str(tiny_recipe(tmp_path)), f"--model.model={model}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vkvtrain fit: ") and reason in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "run").glob("*"))


def test_help_usage_names_the_recipe(capsys) -> None:
    assert main(["fit", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m vkvtrain fit RECIPE")


def test_unknown_subcommand_usage(capsys) -> None:
    assert main(["train", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'train'" in err and "fit, validate, test" in err


def test_every_recipe_parses_without_loading(capsys, monkeypatch) -> None:
    import vkvtrain.models.loading as loading

    monkeypatch.setattr(loading, "load_mlm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    recipes = sorted((REPO / "recipes").glob("**/*.yaml"))
    assert {p.name for p in recipes} >= {"prefix.yaml", "key_artifact.yaml", "late_lora.yaml", "qlora.yaml",
                                         "prefix_ddp.yaml"}
    for recipe in recipes:
        assert main(["fit", str(recipe), "--print_config"]) == 0, recipe
        config = yaml.safe_load(capsys.readouterr().out)
        assert config["model"]["interventions"], recipe


@pytest.mark.parametrize("name", ["key_artifact", "late_lora", "qlora", "blocking"])
def test_other_tiny_recipes_fit_one_step(tmp_path, name) -> None:
    recipe = REPO / "recipes" / "tiny" / f"{name}.yaml"
    assert main(["fit", str(recipe), "--trainer.logger=false", "trainer.max_steps=1", "trainer.val_check_interval=1",
                 "trainer.limit_val_batches=1", f"trainer.default_root_dir={tmp_path}",
                 "--trainer.callbacks=[]", "trainer.enable_checkpointing=false"]) == 0


def test_fit_then_validate_and_test_from_checkpoint(tmp_path, capsys) -> None:
    common = ["--trainer.logger=false", f"trainer.default_root_dir={tmp_path}", "trainer.limit_val_batches=1",
              "--model.probe_tasks=null", "--trainer.callbacks=[]"]
    assert main(["fit", str(TINY_PREFIX), *common, "trainer.max_steps=2", "trainer.val_check_interval=2"]) == 0
    ckpts = sorted(tmp_path.glob("**/*.ckpt"))
    assert ckpts
    capsys.readouterr()
    for sub in ("validate", "test"):
        assert main([sub, str(TINY_PREFIX), *common, f"--ckpt_path={ckpts[-1]}"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"{'val' if sub == 'validate' else 'test'}/data/key_agnosticism/score \[layers 0 1 2 3\]"
                         r"\s+[\d.]+ [\d.]+ [\d.]+ [\d.]+", out)  # the closing summary's per-layer row
    assert main(["validate", str(TINY_PREFIX), *common, f"--ckpt_path={tmp_path / 'missing.ckpt'}"]) == 2
    assert "missing.ckpt' does not exist" in capsys.readouterr().err


def test_fit_summary_names_every_output_and_pasteable_follow_ups(tmp_path, capsys) -> None:
    """The closing lines of fit: run folder, config, checkpoint, peft adapter, W&B run, final metrics; the printed
    follow-up commands name this interpreter."""
    recipe = tiny_recipe(tmp_path, **{"trainer.max_steps": 2, "trainer.val_check_interval": 2,
                                      "model.probe_tasks": None})
    late_lora = yaml.safe_load((REPO / "recipes" / "tiny" / "late_lora.yaml").read_text())["model"]["interventions"]
    text = recipe.read_text()
    config = yaml.safe_load(text)
    config["model"]["interventions"] = late_lora
    recipe.write_text(yaml.safe_dump(config))
    assert main(["fit", str(recipe)]) == 0
    out = capsys.readouterr().out.split("== fit ")[-1]
    fields = dict(re.findall(r"^  (run folder|config|checkpoint \(last\)|peft adapter 0|W&B run) +(\S+)$", out, re.M))
    run = Path(fields["run folder"])
    assert run.parent == tmp_path / "run" and run.is_dir()
    assert Path(fields["config"]) == run / "config.yaml" and (run / "config.yaml").is_file()
    assert Path(fields["checkpoint (last)"]) == run / "checkpoints" / "last.ckpt"
    adapter = Path(fields["peft adapter 0"]) / "adapter_model.safetensors"
    umask = os.umask(0)
    os.umask(umask)
    assert adapter.is_file() and stat.S_IMODE(adapter.stat().st_mode) == 0o666 & ~umask  # not peft's 0600
    assert Path(fields["W&B run"]).parent == run / "wandb"
    assert re.search(r"^  val/loss +[\d.]+$", out, re.M) and re.search(r"^  train/loss +[\d.]+$", out, re.M)
    # the printed follow-ups run as pasted (here in-process, after the interpreter and `-m vkvtrain`)
    evaluate = shlex.split(re.search(r"evaluate the checkpoint on BLINK:\n +(.+)", out).group(1))
    assert evaluate[:4] == [sys.executable, "-m", "vkvtrain", "evaluate"]
    assert main([*evaluate[3:], "--data.synthetic_n", "1", "--output_dir", str(tmp_path / "eval"),
                 "--progress", "false"]) == 0
    resume = shlex.split(re.search(r"resume training from it:\n +(.+)", out).group(1))
    assert resume[:5] == [sys.executable, "-m", "vkvtrain", "fit", str(run / "config.yaml")]
    assert main([*resume[3:], "trainer.max_steps=3", "--trainer.logger=false"]) == 0
    resumed = Path(re.search(r"^  checkpoint \(last\) +(\S+)$", capsys.readouterr().out, re.M).group(1))
    assert resumed.parent.parent.parent == run.parent and resumed.parent.parent != run
    assert torch.load(resumed, weights_only=True)["global_step"] == 3  # continued from step 2


def test_online_wandb_recipe_falls_back_to_offline_when_not_logged_in(tmp_path, monkeypatch, capsys) -> None:
    from vkvtrain.models.tiny import tiny_cache_dir
    from vkvtrain.training_cli import build_cli

    monkeypatch.setenv("VKVTRAIN_CACHE", str(tiny_cache_dir().parent))  # HOME moves below; the cache stays
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    cli = build_cli(["fit", str(REPO / "recipes" / "prefix.yaml"), f"trainer.default_root_dir={tmp_path}",
                     "--model.model=tiny://llava_onevision", "trainer.accelerator=cpu"], run=False)
    assert cli.trainer.logger._offline is True
    assert "not logged in" in capsys.readouterr().err
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "x" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    cli = build_cli(["fit", str(REPO / "recipes" / "prefix.yaml"), f"trainer.default_root_dir={tmp_path}",
                     "--model.model=tiny://llava_onevision", "trainer.accelerator=cpu"], run=False)
    assert cli.trainer.logger._offline is False
