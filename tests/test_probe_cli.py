"""`python -m vkvtrain probe`: the shipped config on tiny models, reports, correlation, strict config keys."""

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
from scipy import stats

from vkvtrain.arguments import parse_call
from vkvtrain.cli import main as cli_main
from vkvtrain.errors import RecipeError
from vkvtrain.probes.cli import probe
from vkvtrain.probes.config import ModelSpec, PrefixSpec, ProbeConfig
from vkvtrain.probes.report import layer0_correlation

ROOT = Path(__file__).resolve().parents[1]


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


def test_probe_command_runs_the_shipped_config_on_tiny_models(tmp_path: Path) -> None:
    out = tmp_path / "probes"
    cmd = [sys.executable, "-m", "vkvtrain", "probe", "eval/probes.yaml", "--output_dir", str(out),
           "--tasks", "[fewshot, semantic, keypoints, key_agnosticism]", "--data.fewshot.n", "2",
           "--data.semantic.n", "3", "--data.keypoints.n", "2", "--prefix.mode", "task"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"^  json +{re.escape(str(out / 'probes.json'))}$", proc.stdout, re.M)  # the closing summary
    assert "tiny-qwen2.5-vl: best row per task" in proc.stdout
    payload = json.loads((out / "probes.json").read_text())
    results = payload["results"]
    assert list(results) == ["tiny-llava-onevision", "tiny-qwen2.5-vl", "tiny-llava-next"]
    ov = results["tiny-llava-onevision"]
    assert list(ov) == ["fewshot", "semantic", "keypoints", "key_agnosticism"]
    assert list(ov["fewshot"]["miou"]) == ["embeds", "0", "1", "2", "3", "vision"]
    assert all(0 <= v <= 1 for v in ov["fewshot"]["miou"].values())
    assert math.isnan(ov["semantic"]["miou"]["vision"]) and math.isfinite(ov["semantic"]["miou"]["embeds"])
    assert math.isnan(ov["key_agnosticism"]["score"]["embeds"]) and 0 < ov["key_agnosticism"]["score"]["3"] < 1
    assert set(payload["extras"]["tiny-llava-onevision"]["key_agnosticism"]["flagged"]) == {"0", "1", "2", "3"}
    # correlation of layer-0 (embeds) scores with the configured perception scores, checked against numpy
    corr = payload["correlation"]
    layer0 = [results[m]["fewshot"]["miou"]["embeds"] for m in results]
    assert corr["fewshot"]["layer0"] == pytest.approx(layer0)
    assert corr["fewshot"]["pearson"] == pytest.approx(np.corrcoef(layer0, [40.0, 38.0, 42.0])[0, 1], abs=1e-9)
    with open(out / "probes.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["model", "row", "fewshot.miou"] and len(rows) == 1 + 3 * 6
    md = (out / "probes.md").read_text()
    assert "| row | fewshot.miou | semantic.miou | keypoints.pck | key_agnosticism.score |" in md
    assert "Layer-0 (embeds)" in md
    pngs = sorted(out.glob("heatmap_*.png"))
    assert len(pngs) == 3 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_random_init_control_model_row(tmp_path: Path) -> None:
    """A models entry with random_init probes fresh weights of the same architecture, under its own name."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models:\n  - {spec: 'tiny://llava_next'}\n  - {spec: 'tiny://llava_next', random_init: true}\n"
        "tasks: [fewshot]\nsources: [layers]\nprogress: false\n"
        f"output_dir: {tmp_path / 'out'}\ndata:\n  fewshot: {{source: synthetic, n: 2}}\n"
    )
    assert main([str(cfg)]) == 0
    results = json.loads((tmp_path / "out" / "probes.json").read_text())["results"]
    assert list(results) == ["tiny://llava_next", "tiny://llava_next (random init)"]
    trained, fresh = (results[m]["fewshot"]["miou"] for m in results)
    assert trained.keys() == fresh.keys() and trained != fresh


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
        cfg = ProbeConfig(prefix=PrefixSpec(mode=mode))
        assert ProbeSuite(mlm, cfg).prefix("referring", "the red circle") == want


def test_layer0_correlation_matches_scipy_and_needs_three_models() -> None:
    def res(v: float) -> dict:
        return {"fewshot": {"miou": {"embeds": v, "0": 0.5}}, "keypoints": {"pck": {"embeds": v / 2, "0": 0.1}}}

    per_model = {"a": res(0.2), "b": res(0.5), "c": res(0.4), "d": res(0.9)}
    scores = {"a": 30.0, "b": 45.0, "c": 50.0, "d": 60.0}
    corr = layer0_correlation(per_model, scores)
    x = [0.2, 0.5, 0.4, 0.9]
    y = list(scores.values())
    assert corr["fewshot"]["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert corr["fewshot"]["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert corr["mean"]["layer0"] == pytest.approx([(v + v / 2) / 2 for v in x])
    few = layer0_correlation({"a": res(0.2), "b": res(0.5)}, scores)
    assert "needs >= 3 models" in few["fewshot"]["note"] and "pearson" not in few["fewshot"]
