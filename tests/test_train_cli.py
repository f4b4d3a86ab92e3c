"""The fit/validate/test entry: positional recipe shim, overrides, typo errors before any model loads."""

from __future__ import annotations

import pytest
import yaml

from helpers_train import TINY_PREFIX, tiny_recipe
from vkvtrain.training_cli import main, shim_argv


def test_shim_argv() -> None:
    assert shim_argv(["fit", "r.yaml", "trainer.devices=2", "--model.learning_rate=1"]) == [
        "fit", "-c", "r.yaml", "--trainer.devices=2", "--model.learning_rate=1"]
    assert shim_argv(["fit", "-c", "r.yaml", "--ckpt_path", "last.ckpt"]) == ["fit", "-c", "r.yaml", "--ckpt_path", "last.ckpt"]
    assert shim_argv(["validate", "--config", "a.yml"]) == ["validate", "--config", "a.yml"]


def test_positional_and_dash_c_resolve_to_the_same_recipe(capsys) -> None:
    outputs = []
    for argv in (["fit", str(TINY_PREFIX)], ["fit", "-c", str(TINY_PREFIX)]):
        assert main([*argv, "trainer.max_steps=7", "--model.learning_rate=0.3", "--print_config"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
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
    assert typo in capsys.readouterr().err


def test_unknown_subcommand_usage(capsys) -> None:
    assert main(["train", "x.yaml"]) == 2
    assert "fit,validate,test" in capsys.readouterr().err


def test_every_recipe_parses_without_loading(capsys, monkeypatch) -> None:
    from helpers_train import REPO

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
    from helpers_train import REPO

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
        assert f"{'val' if sub == 'validate' else 'test'}/split_keys/agnosticism/layer_3" in capsys.readouterr().out
    assert main(["validate", str(TINY_PREFIX), *common, f"--ckpt_path={tmp_path / 'missing.ckpt'}"]) == 2
    assert "missing.ckpt' does not exist" in capsys.readouterr().err


def test_online_wandb_recipe_falls_back_to_offline_when_not_logged_in(tmp_path, monkeypatch, capsys) -> None:
    from helpers_train import REPO

    from vkvtrain.training_cli import build_cli

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    cli = build_cli(["fit", str(REPO / "recipes" / "prefix.yaml"), f"trainer.default_root_dir={tmp_path}",
                     f"trainer.logger.init_args.save_dir={tmp_path}", "trainer.accelerator=cpu"], run=False)
    assert cli.trainer.logger._offline is True
    assert "not logged in" in capsys.readouterr().err
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "x" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    cli = build_cli(["fit", str(REPO / "recipes" / "prefix.yaml"), f"trainer.default_root_dir={tmp_path}",
                     f"trainer.logger.init_args.save_dir={tmp_path}", "trainer.accelerator=cpu"], run=False)
    assert cli.trainer.logger._offline is False
