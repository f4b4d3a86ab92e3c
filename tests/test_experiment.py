"""The intervention experiment end to end on a tiny model: fit, evaluate, compare, one table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vkvtrain.data.synthetic_blink import write_synthetic_blink
from vkvtrain.errors import RecipeError
from vkvtrain.experiment import Arm, ExperimentConfig, QuestionSet, run_experiment

TRAINED = ["Visual_Correspondence", "Art_Style"]
TRANSFER = ["Semantic_Correspondence"]


def test_experiment_table_compares_every_arm_with_the_base(tmp_path: Path) -> None:
    root = tmp_path / "questions"
    write_synthetic_blink(root, 2, seed=1, subtasks=TRAINED, image_size=32, split="train")
    write_synthetic_blink(root, 3, seed=2, subtasks=TRAINED + TRANSFER, image_size=32, split="val")
    # a question set of the model's own (not a BLINK subtask name): local folders may hold those
    write_synthetic_blink(tmp_path / "own", 3, seed=3, subtasks=["Counting"], image_size=32, split="val")
    (tmp_path / "own" / "Counting").rename(root / "colour")
    cfg = ExperimentConfig(
        model="tiny://llava_onevision",
        train=QuestionSet(str(root), "train", TRAINED),
        evaluate={"trained": QuestionSet(str(root), "val", TRAINED), "transfer": QuestionSet(str(root), "val", TRANSFER),
                  "taught": QuestionSet(str(root), "val", ["colour"])},
        arms=[Arm("prefix", [{"class_path": "vkvtrain.interventions.LearnedPrefix", "init_args": {"num_tokens": 2}}],
                  learning_rate=0.05),
              Arm("blocking", [{"class_path": "vkvtrain.interventions.AttentionBlocking",
                                "init_args": {"layers": [-1], "top_k": 2}}], train=False)],
        steps=2, batch_size=2, probe_layer=0, n_resamples=50, output_dir=str(tmp_path / "out"),
        progress=False,
    )
    table = run_experiment(cfg)
    assert set(table["sets"]) == {"trained", "transfer", "taught"}
    taught = {(r["subtask"], r["metric"]) for r in table["sets"].pop("taught")["rows"]}
    assert ("colour", "output_accuracy") in taught and ("colour", "probe_accuracy") not in taught  # keyed by folder
    for name, comparison in table["sets"].items():
        assert [r["label"] for r in comparison["runs"]] == ["base", "prefix", "blocking"]
        rows = {(r["subtask"], r["metric"]): r for r in comparison["rows"]}
        subtasks = TRAINED if name == "trained" else TRANSFER
        for subtask in [*subtasks, "macro", "micro"]:
            row = rows[(subtask, "output_accuracy")]
            base, *arms = row["values"]
            for value, diff in zip(arms, row["differences"][1:]):
                assert diff["difference"] == pytest.approx(value - base)  # each arm against the base
                assert diff["low"] <= diff["difference"] <= diff["high"]
            assert (subtask, "probe_accuracy") in rows  # every subtask here has a latent probe
    saved = json.loads((tmp_path / "out" / "experiment.json").read_text())
    assert saved["sets"]["trained"]["rows"] == json.loads(json.dumps(table["sets"]["trained"]["rows"]))
    md = (tmp_path / "out" / "experiment.md").read_text()
    assert "## transfer: output accuracy" in md and "prefix - base" in md
    overview = md[md.index("## Overview"):md.index("## trained: output accuracy")]
    base_row = next(line for line in overview.splitlines() if line.startswith("| base |"))
    macro = next(r for r in table["sets"]["trained"]["rows"] if r["subtask"] == "macro" and r["metric"] == "output_accuracy")
    assert base_row.split(" | ")[1] == f"{100 * macro['values'][0]:.1f}"  # the base row holds the base's macro values
    assert overview.count("| prefix |") == 1 and "trained: surfacing gap" in overview
    assert (tmp_path / "out" / "experiment.png").stat().st_size > 1000
    assert (tmp_path / "out" / "prefix" / "seed0" / "recipe.yaml").is_file()
    assert Path(table["wandb_run"]).is_relative_to(tmp_path / "out")  # the W&B table stays with the experiment
    assert not math.isnan(table["sets"]["trained"]["rows"][0]["values"][0])


def test_bad_experiment_configs_are_refused(tmp_path: Path) -> None:
    q = QuestionSet(str(tmp_path))
    with pytest.raises(RecipeError, match="no arms"):
        ExperimentConfig(model="m", train=q, evaluate={"a": q}, arms=[])
    with pytest.raises(RecipeError, match="distinct and not 'base'"):
        ExperimentConfig(model="m", train=q, evaluate={"a": q}, arms=[Arm("base", [])])
