"""The organism's commands: ``organism build`` and a one-intervention ``organism experiment`` on the tiny size.

Plumbing and bookkeeping only (the tiny organism is trained for a few steps); the full-size figures come from
``make organism``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vkvtrain.data.blink import load_blink
from vkvtrain.data.training import DataSource, ExampleDataset
from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.config import WandbConfig
from vkvtrain.experiment import BLINK_COLUMNS
from vkvtrain.organism.build import MARKER, REPORT
from vkvtrain.organism.experiment import (
    ARMS,
    OrganismExperimentConfig,
    arm,
    experiment,
    experiment_config,
    write_question_sets,
)
from vkvtrain.organism.questions import TAUGHT

ROOT = Path(__file__).resolve().parent.parent


def _vkvtrain(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "VKVTRAIN_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "vkvtrain", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_organism_build_command_writes_a_loadable_folder_and_refuses_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "organism"
    done = _vkvtrain("organism", "build", "--size", "tiny", "--out", str(out), "--progress", "false",
                     cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert (out / MARKER).is_file() and (out / REPORT).is_file() and (out / "model.safetensors").is_file()
    assert "== organism llava_onevision@tiny" in done.stdout and "build time" in done.stdout
    assert "organism experiment --model" in done.stdout  # the next command, pasteable
    again = _vkvtrain("organism", "build", "--size", "tiny", "--out", str(out), cache=tmp_path / "cache")
    assert again.returncode == 2 and again.stderr.startswith("vkvtrain organism build: ")
    assert "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bad = _vkvtrain("organism", "build", "--family", "qwen2_5_vl", "--size", "tiny", "--out", str(tmp_path / "q"),
                    cache=tmp_path / "cache")
    assert bad.returncode == 2 and "llava_onevision, llava_next" in bad.stderr
    assert not (tmp_path / "q").exists()


def test_one_intervention_experiment_on_the_tiny_organism(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    cfg = OrganismExperimentConfig(
        size="tiny", arms=["prefix"], trained_subtasks=["Art_Style", "Visual_Correspondence"],
        transfer_subtasks=["Visual_Similarity"], n_train=4, n_eval=8, steps=2, batch_size=2, n_resamples=50,
        output_dir=str(tmp_path / "out"), wandb=WandbConfig(project=None), progress=False,
    )
    outcome = experiment(cfg)
    table = json.loads((tmp_path / "out" / "experiment.json").read_text())
    assert set(table["sets"]) == {"trained", "transfer", "taught"}
    assert table["model"] == "organism://llava_onevision@tiny"
    for name, subtasks in (("trained", cfg.trained_subtasks), ("transfer", cfg.transfer_subtasks),
                           ("taught", list(TAUGHT))):
        comparison = table["sets"][name]
        assert [r["label"] for r in comparison["runs"]] == ["base", "prefix"]
        rows = {(r["subtask"], r["metric"]): r for r in comparison["rows"]}
        for subtask in subtasks:
            row = rows[(subtask, "output_accuracy")]
            assert row["n"] == cfg.n_eval
            base, trained = row["values"]
            assert row["differences"][1]["difference"] == pytest.approx(trained - base)
            assert ((subtask, "probe_accuracy") in rows) == (name != "taught")  # gap subtasks have latent probes
    assert "trained output vs base (points)" in outcome.figures
    assert (tmp_path / "out" / "experiment.md").read_text().count("## trained:") >= 2
    recipe = (tmp_path / "out" / "prefix" / "seed0" / "recipe.yaml").read_text()
    assert "questions/gap" in recipe and "split: train" in recipe


def test_training_and_evaluation_questions_never_overlap(tmp_path: Path) -> None:
    cfg = OrganismExperimentConfig(size="tiny", trained_subtasks=["Art_Style"], transfer_subtasks=["Visual_Similarity"],
                                   n_train=6, n_eval=6)
    sets = write_question_sets(cfg, tmp_path)
    # read as fit reads it (the recipe the experiment writes) and as evaluate reads it
    train = ExampleDataset(DataSource(source=sets["train"].root, split="train", **BLINK_COLUMNS))
    held_out = load_blink(root=sets["trained"].root, split="val", subtasks=["Art_Style"])
    assert len(train) == len(held_out) == 6
    train_pixels = {train[i].images[0].tobytes() for i in range(len(train))}
    assert not train_pixels & {q.images[0].tobytes() for q in held_out}
    assert {train[i].answer for i in range(len(train))} <= {"(A)", "(B)"}  # the organism's answer form
    taught = load_blink(root=sets["taught"].root, split="val", subtasks=list(TAUGHT))
    assert sorted({q.sub_task for q in taught}) == sorted(TAUGHT) and len(taught) == 6 * len(TAUGHT)


def test_the_generic_experiment_gets_the_organisms_format_and_probe_layer(tmp_path: Path) -> None:
    cfg = OrganismExperimentConfig(size="tiny", trained_subtasks=["Art_Style"], transfer_subtasks=[], probe_layer=-1,
                                   n_train=2, n_eval=2, output_dir=str(tmp_path / "out"))
    made = experiment_config(cfg, write_question_sets(cfg, tmp_path / "q"))
    assert (made.probe_layer, made.continuation, made.pre_prompt) == (-1, "paren_letter", "")
    assert set(made.evaluate) == {"trained", "taught"} and made.model == "organism://llava_onevision@tiny"


def test_every_arm_is_a_valid_recipe_and_bad_configs_name_the_fix() -> None:
    for name in ARMS:
        made = arm(name, [-1])
        assert made.name == name and made.interventions
        assert made.train == (name not in ("blocking", "blocking_random"))
    with pytest.raises(RecipeError, match="choose one or more of prefix"):
        OrganismExperimentConfig(arms=["lora"])
    with pytest.raises(RecipeError, match="not gap subtasks"):
        OrganismExperimentConfig(trained_subtasks=["Counting"])
    with pytest.raises(RecipeError, match="both trained and transfer"):
        OrganismExperimentConfig(trained_subtasks=["Art_Style"], transfer_subtasks=["Art_Style"])
    with pytest.raises(RecipeError, match="families: llava_onevision"):
        OrganismExperimentConfig(family="qwen2_5_vl")
