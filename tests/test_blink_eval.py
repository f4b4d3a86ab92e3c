"""`python -m vkvtrain evaluate`: end to end on the synthetic set, config errors, trained checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers_blink import one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain.data.blink import BLINK_SUBTASKS
from vkvtrain.data.synthetic_blink import write_synthetic_blink
from vkvtrain.cli import main as cli_main
from vkvtrain.evaluation.cli import parse_config
from vkvtrain.evaluation.report import describe

CONFIG = str(Path(__file__).resolve().parents[1] / "eval" / "blink.yaml")


def main(argv: list[str]) -> int:
    """``python -m vkvtrain evaluate ARGV``."""
    return cli_main(["evaluate", *argv])


def _read(out: Path) -> tuple[dict, list[dict], str]:
    res = json.loads((out / "results.json").read_text())
    recs = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    return res, recs, (out / "results.md").read_text()


def test_tiny_evaluation_over_all_14_subtasks_from_local_folder(tmp_path: Path, capsys) -> None:
    root = write_synthetic_blink(tmp_path / "blink", n_per_subtask=1, seed=0, image_size=32)
    out = tmp_path / "out"
    rc = main([CONFIG, "--model", "tiny://llava_onevision", "--data.root", str(root),
               "--output_dir", str(out), "--probes.probe_layer", "-1", "--batch_size", "5", "--mode", "likelihood"])
    assert rc == 0, capsys.readouterr().err
    res, recs, md = _read(out)
    assert list(res["subtasks"]) == list(BLINK_SUBTASKS)
    assert all(v["n"] == 1 and v["invalid"] == 0.0 for v in res["subtasks"].values())  # likelihood: always valid
    assert [r["sub_task"] for r in recs] == list(BLINK_SUBTASKS)  # input order, though batches are length-sorted
    assert len(recs) == 14 and all(r["prediction"] == "ABCD"[max(range(len(r["scores"])), key=r["scores"].__getitem__)] for r in recs)
    accs = [v["accuracy"] for v in res["subtasks"].values()]
    assert res["macro"] == pytest.approx(sum(accs) / 14) and res["micro"] == pytest.approx(sum(r["correct"] for r in recs) / 14)
    # probes: pooled subtasks and, thanks to the carried points, the three correspondence subtasks
    assert set(res["latent"]["subtasks"]) == {"Art_Style", "Visual_Similarity", "Functional_Correspondence",
                                              "Semantic_Correspondence", "Visual_Correspondence"}
    assert all(v["layer"] == 3 for v in res["latent"]["subtasks"].values())  # tiny model: 4 layers, -1 -> 3
    assert "| Jigsaw | 1 |" in md and "Latent vs output" in md
    assert res["config"]["data"]["root"] == str(root) and res["config"]["prompt"]["continuation"] == "letter"
    summary = capsys.readouterr().out.split("== evaluate tiny://llava_onevision")[-1]
    assert re.search(rf"^  results.json +{re.escape(str(out / 'results.json'))}$", summary, re.M)
    assert re.search(rf"^  BLINK val +macro {100 * res['macro']:.1f}, micro {100 * res['micro']:.1f} over 14 questions$",
                     summary, re.M)
    assert re.search(rf"^  protocol +{re.escape(describe(res)[0].split(': ', 1)[1])}$", summary, re.M)


def test_generate_mode_on_synthetic_source(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    rc = main(["-c", CONFIG, "model=tiny://llava_next", "--data.source=synthetic", "--data.synthetic_n", "2",
               "--data.subtasks", "Counting", "--data.subtasks", "Art_Style", "--mode", "generate",
               "--max_new_tokens", "4", "--output_dir", str(out), "--probes.enabled", "false", "--progress", "false"])
    assert rc == 0
    assert re.search(r"^  protocol +greedy generation.*max_new_tokens 4$", capsys.readouterr().out, re.M)
    res, recs, _ = _read(out)
    assert res["mode"] == "generate" and "latent" not in res
    assert len(recs) == 4 and all(isinstance(r["response"], str) for r in recs)
    # invalid rate = share of responses the strict parser could not read (a random tiny model babbles)
    from vkvtrain.evaluation.blink import parse_choice

    for name in ("Counting", "Art_Style"):
        rs = [r for r in recs if r["sub_task"] == name]
        assert res["subtasks"][name]["invalid"] == sum(parse_choice(r["response"], r["n_choices"]) is None for r in rs) / 2


def test_unknown_keys_and_bad_values_fail_naming_them(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny://llava_onevision\ndata:\n  source: synthetic\n  bogus_key: 1\n")
    assert main([str(bad)]) == 2
    assert "bogus_key" in capsys.readouterr().err
    bad.write_text("model: tiny://llava_onevision\nbatchsize: 3\n")
    assert main([str(bad)]) == 2
    assert "batchsize" in capsys.readouterr().err
    assert main([CONFIG, "--prompt.continuation", "word"]) == 2
    assert "prompt.continuation" in capsys.readouterr().err
    assert main([CONFIG, "--probes.probe_layer", "best"]) == 2
    assert "heldout" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([CONFIG, "--batch_siz", "3"]) == 2  # a prefix of batch_size is not a key
    err = capsys.readouterr().err
    assert err == "vkvtrain evaluate: unrecognized arguments: --batch_siz 3\n"


def test_config_overrides_and_missing_data(tmp_path: Path, capsys) -> None:
    cfg = parse_config(["evaluate", CONFIG, "--model", "tiny://qwen2_5_vl", "--data.root", "/x", "--probes.probe_layer", "2"])
    assert cfg.model == "tiny://qwen2_5_vl" and cfg.data.root == "/x" and cfg.probes.probe_layer == 2
    assert cfg.prompt.pre_prompt.startswith("Note: You only need to respond with {} without")
    write_synthetic_blink(tmp_path / "d", 1, subtasks=["Counting"])
    assert main([CONFIG, "--model", "tiny://llava_onevision", "--data.root", str(tmp_path / "d"), "--data.subtasks", '["Jigsaw"]']) == 2
    assert "Jigsaw" in capsys.readouterr().err
    assert main([CONFIG, "--model", "tiny://llava_onevision", "--data.source", "synthetic",
                 "--ckpt_path", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt" in capsys.readouterr().err


def test_trained_checkpoint_is_evaluated_with_its_interventions(tmp_path: Path, capsys) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from helpers_train import blink_source
    from vkvtrain.interventions import prompt_prefix
    from vkvtrain.data.synthetic_blink import synthetic_blink_questions
    from vkvtrain.datamodule import VKVDataModule
    from vkvtrain.evaluation.blink import evaluate_blink
    from vkvtrain.evaluation.config import EvalConfig, ProbeConfig
    from vkvtrain.evaluation.protocol import PromptProtocol
    from vkvtrain.interventions import LearnedPrefix
    from vkvtrain.module import VKVModule

    L.seed_everything(0)
    module = VKVModule(model="tiny://llava_onevision", interventions=[LearnedPrefix(num_tokens=2)], learning_rate=0.5)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(module, VKVDataModule(train=blink_source("train", n=2), val=blink_source("val", n=1), batch_size=2))
    ckpt = tmp_path / "ckpt" / "last.ckpt"

    subtasks = '["Counting", "Visual_Similarity"]'
    args = [CONFIG, "--model", "tiny://llava_onevision", "--data.source", "synthetic", "--data.synthetic_n", "2",
            "--data.subtasks", subtasks, "--progress", "false", "--probes.probe_layer", "0", "--mode", "likelihood"]
    assert main([*args, "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "trained")]) == 0
    assert main([*args, "--output_dir", str(tmp_path / "base")]) == 0
    # without --model the checkpoint's own model is loaded; without either there is nothing to evaluate
    no_model = [a for a in args if a not in ("--model", "tiny://llava_onevision")]
    assert main([*no_model, "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "own")]) == 0
    assert main([*no_model, "--output_dir", str(tmp_path / "none")]) == 2
    assert "pass --model" in capsys.readouterr().err and not (tmp_path / "none").exists()
    _, own, _ = _read(tmp_path / "own")
    _, trained, _ = _read(tmp_path / "trained")
    assert own == trained
    _, base, _ = _read(tmp_path / "base")

    # Oracle: the fitted in-memory model, prompted with its learned prefix, gives the same scores.
    module.mlm.model.eval()
    qs = synthetic_blink_questions(2, 0, ["Counting", "Visual_Similarity"])
    opts = EvalConfig(mode="likelihood", prompt=PromptProtocol(prefix=prompt_prefix(module.interventions)), probes=ProbeConfig(probe_layer=0))
    expected, _ = evaluate_blink(module.mlm, qs, opts, progress=False)
    def flat(recs: list[dict]) -> torch.Tensor:
        return torch.tensor([s for r in recs for s in r["scores"]])

    torch.testing.assert_close(flat(trained), flat(expected))
    assert (flat(trained) - flat(base)).abs().max() > 1e-3  # the learned prefix changed the answers' scores


def test_evaluate_applies_configured_blocking_like_the_in_memory_oracle(tmp_path: Path, capsys) -> None:
    """`interventions:` in the eval config: explicit positions give the scores of the same blocking attached by
    hand; positions left to calibration are chosen on the first questions' images and written to results.json."""
    from vkvtrain import load_mlm
    from vkvtrain.data.synthetic_blink import synthetic_blink_questions
    from vkvtrain.evaluation.blink import evaluate_blink
    from vkvtrain.evaluation.config import EvalConfig, ProbeConfig
    from vkvtrain.interventions import AttentionBlocking

    subtasks = ["Counting", "Art_Style"]
    args = [CONFIG, "--model", "tiny://llava_onevision", "--data.source", "synthetic", "--data.synthetic_n", "2",
            "--data.subtasks", json.dumps(subtasks), "--progress", "false", "--probes.enabled", "false",
            "--mode", "likelihood"]
    spec = '[{"class_path": "vkvtrain.interventions.AttentionBlocking", "init_args": {"layers": [-2, -1], "positions": [0, 3, 5]}}]'
    assert main([*args, "--interventions", spec, "--output_dir", str(tmp_path / "blocked")]) == 0
    assert main([*args, "--output_dir", str(tmp_path / "base")]) == 0
    res, blocked, _ = _read(tmp_path / "blocked")
    _, base, _ = _read(tmp_path / "base")
    assert res["interventions"][0]["blocked_positions"] == {"2": [0, 3, 5], "3": [0, 3, 5]}

    mlm = load_mlm("tiny://llava_onevision")
    AttentionBlocking(layers=[-2, -1], positions=[0, 3, 5]).attach(mlm)
    expected, _ = evaluate_blink(mlm, synthetic_blink_questions(2, 0, subtasks),
                                 EvalConfig(mode="likelihood", probes=ProbeConfig(enabled=False)), progress=False)
    flat = lambda recs: torch.tensor([s for r in recs for s in r["scores"]])  # noqa: E731
    torch.testing.assert_close(flat(blocked), flat(expected))
    assert (flat(blocked) - flat(base)).abs().max() > 1e-4

    calibrated = '[{"class_path": "vkvtrain.interventions.AttentionBlocking", "init_args": {"layers": [-1], "top_k": 3}}]'
    assert main([*args, "--interventions", calibrated, "--calibration_questions", "2",
                 "--output_dir", str(tmp_path / "calibrated")]) == 0
    picked = _read(tmp_path / "calibrated")[0]["interventions"][0]["blocked_positions"]["3"]
    assert len(picked) == 3 and picked == sorted(set(picked))
    assert main([*args, "--interventions", '[{"init_args": {}}]', "--output_dir", str(tmp_path / "bad")]) == 2
    assert "needs a class_path" in capsys.readouterr().err
