"""`python -m vkvtrain probe`: the shipped config on tiny models, reports, the input-embedding correlation from
evaluate results, controls, strict config keys and validated values."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from vkvtrain.errors import RecipeError
from vkvtrain.evaluation.report import summarize, write_outputs
from vkvtrain.arguments import parse_call
from vkvtrain.cli import main as cli_main
from vkvtrain.probes.cli import probe
from vkvtrain.probes.config import ModelSpec, ProbeConfig
from vkvtrain.probes.perception import PerceptionScore, read_perception_score
from vkvtrain.probes.report import input_embeds_correlation, markdown

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"tiny-llava-onevision": "tiny://llava_onevision", "tiny-qwen2.5-vl": "tiny://qwen2_5_vl",
          "tiny-llava-next": "tiny://llava_next"}


def main(argv: list[str]) -> int:
    """``python -m vkvtrain probe ARGV``."""
    return cli_main(["probe", *argv])


def load_config(path: str | Path | None, overrides: list[tuple[str, str]] | None = None) -> ProbeConfig:
    """The ProbeConfig the command line ``probe [path] --key value ...`` gives."""
    argv = [str(path)] if path is not None else []
    for key, value in overrides or []:
        argv += [f"--{key}", value]
    (config,), extra = parse_call(probe, argv, "python -m vkvtrain probe")
    if extra.get("model"):
        config.models = [ModelSpec(spec=extra["model"])]
    return config  # type: ignore[no-any-return]


def evaluate_results(out: Path, model: str, right: list[int], **extra: object) -> Path:
    """A results.json as `vkvtrain evaluate` writes it (its own summarize + write_outputs), with
    ``right[i]`` of 4 questions right in subtask i."""
    records = [{"sub_task": sub, "answer": "A", "prediction": "A" if q < k else "B", "correct": q < k}
               for sub, k in zip(("Art_Style", "Counting"), right) for q in range(4)]
    results = {**summarize(records), "model": model, "ckpt_path": None, "interventions": [], **extra}
    return write_outputs(out, results, records) / "results.json"


def test_probe_command_runs_the_shipped_config_on_tiny_models(tmp_path: Path) -> None:
    out = tmp_path / "probes"
    scores = {name: evaluate_results(tmp_path / name, spec, right)
              for (name, spec), right in zip(MODELS.items(), ([1, 2], [3, 4], [0, 2]))}
    models = [{"spec": spec, "name": name, "perception_results": str(scores[name])} for name, spec in MODELS.items()]
    cmd = [sys.executable, "-m", "vkvtrain", "probe", "eval/probes.yaml", "--output_dir", str(out),
           "--tasks", "[fewshot, semantic, keypoints, key_agnosticism]", "--data.fewshot.n", "2",
           "--data.semantic.n", "3", "--data.keypoints.n", "2", "--prefix.mode", "task", "--progress", "false",
           "--models", yaml.safe_dump(models, default_flow_style=True)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"^  json +{re.escape(str(out / 'probes.json'))}$", proc.stdout, re.M)  # the closing summary
    assert "tiny-qwen2.5-vl: best row per task" in proc.stdout
    payload = json.loads((out / "probes.json").read_text())
    results = payload["results"]
    assert list(results) == list(MODELS)
    ov = results["tiny-llava-onevision"]
    assert list(ov) == ["fewshot", "semantic", "keypoints", "key_agnosticism"]
    assert list(ov["fewshot"]["miou"]) == ["input_embeds", "0", "1", "2", "3", "vision"]
    assert all(0 <= v <= 1 for v in ov["fewshot"]["miou"].values())
    assert math.isnan(ov["semantic"]["miou"]["vision"]) and math.isfinite(ov["semantic"]["miou"]["input_embeds"])
    assert math.isnan(ov["key_agnosticism"]["score"]["input_embeds"]) and 0 < ov["key_agnosticism"]["score"]["3"] < 1
    extras = payload["extras"]
    assert set(extras["tiny-llava-onevision"]["key_agnosticism"]["flagged"]) == {"0", "1", "2", "3"}
    # each family's own image size for the key probe: the tiny processors' base sizes / the Qwen pixel cap
    assert {m: extras[m]["key_agnosticism"]["image_size"] for m in MODELS} == {
        "tiny-llava-onevision": 32, "tiny-qwen2.5-vl": 64, "tiny-llava-next": 32}
    # the correlation uses the macro accuracies of the evaluate runs (checked against numpy) and names its files
    corr = payload["correlation"]
    macro = [0.375, 0.875, 0.25]
    assert [corr["scores"][m]["value"] for m in MODELS] == macro
    assert [corr["scores"][m]["source"] for m in MODELS] == [str(scores[m]) for m in MODELS]
    x = [results[m]["fewshot"]["miou"]["input_embeds"] for m in MODELS]
    assert corr["tasks"]["fewshot"]["input_embeds"] == pytest.approx(x)
    assert corr["tasks"]["fewshot"]["pearson"] == pytest.approx(np.corrcoef(x, macro)[0, 1], abs=1e-9)
    assert "key_agnosticism" not in corr["tasks"]  # a diagnostic, not a perception score
    with open(out / "probes.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["model", "row", "fewshot.miou"] and len(rows) == 1 + 3 * 6
    assert [r[1] for r in rows[1:7]] == ["input_embeds", "0", "1", "2", "3", "vision"]
    md = (out / "probes.md").read_text()
    assert "| row | fewshot.miou | semantic.miou | keypoints.pck | key_agnosticism.score |" in md
    assert "Input embeddings (row `input_embeds`) vs perception score" in md and str(scores["tiny-qwen2.5-vl"]) in md
    pngs = sorted(out.glob("heatmap_*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_correlation_is_omitted_without_three_measured_scores() -> None:
    per_model = {m: {"fewshot": {"miou": {"input_embeds": 0.1 * i, "0": 0.5}}} for i, m in enumerate("abcd")}
    corr = input_embeds_correlation(per_model, {})
    assert "tasks" not in corr and "none for: a, b, c, d" in corr["omitted"]
    assert "Omitted: 0 model(s) have a perception score" in markdown(per_model, corr)
    two = {m: PerceptionScore(0.5 + 0.1 * i, f"/runs/{m}/results.json", m, 8) for i, m in enumerate("ab")}
    corr = input_embeds_correlation(per_model, two)
    assert "tasks" not in corr and "(none for: c, d)" in corr["omitted"]


def test_perception_scores_come_only_from_matching_evaluate_results(tmp_path: Path) -> None:
    good = evaluate_results(tmp_path / "good", "tiny://llava_next", [4, 1])
    score = read_perception_score(good, "tiny://llava_next")
    assert score == PerceptionScore(0.625, str(good), "tiny://llava_next", 8)
    with pytest.raises(RecipeError, match="evaluated 'tiny://llava_next', not 'tiny://qwen2_5_vl'"):
        read_perception_score(good, "tiny://qwen2_5_vl")
    trained = evaluate_results(tmp_path / "ckpt", "tiny://llava_next", [4, 1], ckpt_path="runs/x/last.ckpt")
    with pytest.raises(RecipeError, match="checkpoint or interventions"):
        read_perception_score(trained, "tiny://llava_next")
    with pytest.raises(RecipeError, match="does not exist"):
        read_perception_score(tmp_path / "nope.json", "tiny://llava_next")
    (tmp_path / "probes.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(RecipeError, match="not a `vkvtrain evaluate` results.json"):
        read_perception_score(tmp_path / "probes.json", "tiny://llava_next")
    (tmp_path / "empty.json").write_text(json.dumps({"macro": None, "model": "tiny://llava_next"}))
    with pytest.raises(RecipeError, match="no BLINK macro accuracy"):
        read_perception_score(tmp_path / "empty.json", "tiny://llava_next")
    with pytest.raises(RecipeError, match="is a control"):
        ModelSpec("tiny://llava_next", random_init=True, perception_results=str(good))


def test_controls_random_init_and_shuffled_tokens_get_their_own_rows(tmp_path: Path) -> None:
    """A random_init entry probes fresh weights; a shuffle_tokens entry the same weights with every image's
    tokens at shuffled positions: the planted-free synthetic shapes lose their spatial scores."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models:\n  - {spec: 'tiny://llava_next'}\n  - {spec: 'tiny://llava_next', random_init: true}\n"
        "  - {spec: 'tiny://llava_next', shuffle_tokens: true, shuffle_seed: 3}\n"
        "tasks: [fewshot]\nsources: [layers]\nprogress: false\n"
        f"output_dir: {tmp_path / 'out'}\ndata:\n  fewshot: {{source: synthetic, n: 2}}\n"
    )
    assert main([str(cfg)]) == 0
    results = json.loads((tmp_path / "out" / "probes.json").read_text())["results"]
    assert list(results) == ["tiny://llava_next", "tiny://llava_next (random init)",
                             "tiny://llava_next (shuffled tokens)"]
    trained, fresh, shuffled = (results[m]["fewshot"]["miou"] for m in results)
    assert trained.keys() == fresh.keys() == shuffled.keys() and trained != fresh and trained != shuffled


def test_unknown_keys_fail_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modles: []\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vkvtrain probe: ") and "modles" in err and len(err.splitlines()) == 1
    with pytest.raises(RecipeError, match=r"\"data\".*bogus"):
        load_config(None, [("data.fewshot.bogus", "1")])
    with pytest.raises(RecipeError, match="probe.alpha"):
        load_config(None, [("probe.alpha", "0.2")])
    with pytest.raises(RecipeError, match="--probe.pck_alph"):  # a key prefix is not a key
        load_config(None, [("probe.pck_alph", "0.2")])
    with pytest.raises(RecipeError, match="unknown task"):
        load_config(None, [("tasks", "[fewshot, segment_everything]")])
    with pytest.raises(RecipeError, match=r"prefix.mode"):
        load_config(None, [("prefix.mode", "sometimes")])
    with pytest.raises(RecipeError, match="perception_score"):
        load_config(None, [("models", "[{spec: 'tiny://llava_next', perception_score: 40}]")])


@pytest.mark.parametrize("override, message", [
    (("sources", "[embeds, layers]"), "called input_embeds"),
    (("sources", "[]"), "non-empty subset"),
    (("tasks", "[fewshot, fewshot]"), "lists a task twice"),
    (("data.fewshot.source", "davis"), "does not serve fewshot; use 'pascal5i'"),
    (("data.fewshot.source", "pascal5i"), "data.fewshot.root is required"),
    (("data.fewshot.source", "imagenet"), "is unknown; use synthetic or one of"),
    (("data.fewshot.n", "0"), "n must be >= 1"),
    (("batch_size", "0"), "batch_size must be >= 1"),
    (("key_image_size", "0"), "key_image_size must be >= 1 or null"),
    (("probe.temporal_temperature", "0.001"), "temporal_temperature must be >="),
    (("probe.temporal_topk", "0"), "temporal_topk must be >= 1"),
    (("probe.key_images", "1"), "key_images must be >= 2"),
    (("probe.grounding_threshold", "1.5"), "grounding_threshold must be a number in \\[0, 1\\] or 'mean'"),
    (("probe.fewshot_c", "0"), "fewshot_c must be > 0"),
    (("prefix.task", "{bogus: hi}"), "prefix.task.bogus"),
])
def test_bad_values_fail_before_any_model_loads(override: tuple[str, str], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_config(ROOT / "eval/probes.yaml", [override])


def test_config_built_in_code_is_validated_too() -> None:
    with pytest.raises(RecipeError, match="called input_embeds"):
        ProbeConfig(sources=["embeds"])
    assert ProbeConfig().probe.temporal_temperature == 0.1


def test_overrides_and_model_shorthand() -> None:
    argv = [str(ROOT / "eval" / "probes.yaml"), "--model", "tiny://qwen2_5_vl", "--layers=[1, 3]",
            "--probe.pck_alpha", "0.05", "--tasks", "fewshot", "--tasks", "coseg", "data.fewshot.n=7"]
    (cfg,), extra = parse_call(probe, argv, "probe")
    assert extra == {"model": "tiny://qwen2_5_vl"}  # probe() puts it in place of the config's models
    assert cfg.layers == [1, 3] and cfg.probe.pck_alpha == 0.05 and cfg.tasks == ["fewshot", "coseg"]
    assert cfg.data["fewshot"].n == 7 and cfg.data["temporal"].options == {"frames": 4}  # the rest of the YAML
    assert load_config(ROOT / "eval" / "probes.yaml", [("model", "tiny://llava_next")]).models == [
        ModelSpec(spec="tiny://llava_next")]
    with pytest.raises(RecipeError, match="unrecognized arguments: b.yaml"):  # one config file, then keys
        parse_call(probe, [str(ROOT / "eval" / "probes.yaml"), "b.yaml"], "probe")


def test_prefix_modes(tiny_mlm) -> None:
    from vkvtrain.probes.suite import ProbeSuite

    mlm = tiny_mlm("llava_next")
    for mode, want in (("none", None), ("generic", "Look at the image carefully."),
                       ("task", "Find the red circle in the next image.")):
        cfg = load_config(None, [("prefix.mode", mode)])
        assert ProbeSuite(mlm, cfg).prefix("referring", "the red circle") == want


def test_input_embeds_correlation_matches_scipy() -> None:
    def res(v: float) -> dict:
        return {"fewshot": {"miou": {"input_embeds": v, "0": 0.5}},
                "keypoints": {"pck": {"input_embeds": v / 2, "0": 0.1}},
                "key_agnosticism": {"score": {"input_embeds": math.nan, "0": 0.3}}}

    per_model = {"a": res(0.2), "b": res(0.5), "c": res(0.4), "d": res(0.9)}
    scores = {m: PerceptionScore(v, f"/runs/{m}.json", m, 10) for m, v in zip("abcd", (0.30, 0.45, 0.50, 0.60))}
    corr = input_embeds_correlation(per_model, scores)
    x = [0.2, 0.5, 0.4, 0.9]
    y = [0.30, 0.45, 0.50, 0.60]
    assert corr["tasks"]["fewshot"]["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert corr["tasks"]["fewshot"]["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert corr["tasks"]["mean"]["input_embeds"] == pytest.approx([(v + v / 2) / 2 for v in x])
    assert set(corr["tasks"]) == {"fewshot", "keypoints", "mean"}
