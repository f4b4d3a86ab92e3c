"""`vkvtrain compare` on planted evaluate folders, checked against scipy's binomial test and a plain numpy bootstrap."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from vkvtrain.cli import main
from vkvtrain.evaluation.blink import is_heldout, latent_summary
from vkvtrain.evaluation.config import EvalConfig, ProbeConfig
from vkvtrain.evaluation.report import summarize, write_outputs

SIZES = {"Art_Style": 40, "Counting": 50, "Jigsaw": 30}
PROBED = "Art_Style"  # latent probe on 3 layers; the chosen layer is 1
RESOLUTION = {"family": "llava_onevision", "crop_size": 384}
R = 4000


def _questions() -> list[tuple[str, str]]:
    return [(s, f"val_{s}_{i + 1}") for s, n in SIZES.items() for i in range(n)]


def _write(folder: Path, right: dict, probe: dict | None = None, protocol: dict | None = None,
           resolution: dict | None = None, drop: int = 0, gold_flip: str | None = None) -> Path:
    """An evaluate output folder with planted correctness (right[q]) and probe results (probe[q]: 3 layers)."""
    records = []
    for sub, idx in _questions()[drop:]:
        answer = "A" if idx != gold_flip else "B"
        rec = {"idx": idx, "sub_task": sub, "answer": answer, "n_choices": 2, "response": None, "scores": [0, 0],
               "prediction": "A" if right[(sub, idx)] else "B", "correct": bool(right[(sub, idx)])}
        if probe is not None and sub == PROBED:
            rec["probe_correct"] = probe[(sub, idx)]
            rec["probe_heldout"] = is_heldout(idx, 0.3)
        records.append(rec)
    results = summarize(records)
    if probe is not None:
        results["latent"] = latent_summary(records, [0, 1, 2], ProbeConfig(probe_layer=1), 3)
    results.update(protocol=protocol or EvalConfig().protocol(), resolution=resolution or RESOLUTION,
                   data={"source": "planted", "revision": "test"}, interventions=[], model="planted")
    write_outputs(folder, results, records)
    return folder


def _plant(seed: int, base: dict | None = None, gain: float = 0.0) -> dict:
    """Correctness per question: Bernoulli(0.5), or ``base`` with wrong answers turned right at rate ``gain``."""
    rng = np.random.default_rng(seed)
    out = {}
    for q in _questions():
        if base is None:
            out[q] = bool(rng.random() < 0.5)
        else:
            out[q] = base[q] or bool(rng.random() < gain) if q[0] == PROBED else bool(rng.random() < 0.5)
    return out


def _probe(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {q: [bool(x) for x in rng.random(3) < [0.3, 0.8, 0.5]] for q in _questions() if q[0] == PROBED}


def _loop_ci(a: np.ndarray, b: np.ndarray, groups: list[np.ndarray] | None, macro: bool, seed: int) -> tuple[float, float]:
    """Plain numpy bootstrap, one resample at a time (groups: per-subtask index arrays, or None = unstratified)."""
    rng = np.random.default_rng(seed)
    groups = groups or [np.arange(len(a))]
    values = []
    for _ in range(R):
        picks = [g[rng.integers(0, len(g), len(g))] for g in groups]
        d = [(b[p] - a[p]) for p in picks]
        values.append(np.mean([x.mean() for x in d]) if macro else np.concatenate(d).mean())
    return tuple(np.percentile(values, [2.5, 97.5]))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    a = _plant(0)
    b = _plant(1, base=a, gain=0.5)
    b2 = _plant(2, base=a, gain=0.5)
    probe_a, probe_b = _probe(3), _probe(4)
    folders = {
        "a": _write(root / "a", a, probe_a),
        "b": _write(root / "b_seed1", b, probe_b),
        "b2": _write(root / "b_seed2", b2, probe_b),
    }
    out = root / "cmp"
    assert main(["compare", f"base={folders['a']}", f"prefix={folders['b']}", "--output_dir", str(out),
                 "--n_resamples", str(R), "--seed", "0"]) == 0
    pooled = root / "cmp_pooled"
    assert main(["compare", str(folders["a"]), f"pooled={root}/b_seed*", "--output_dir", str(pooled),
                 "--n_resamples", "200"]) == 0
    return {"root": root, "a": a, "b": b, "b2": b2, "probe_a": probe_a, "probe_b": probe_b, "folders": folders,
            "cmp": json.loads((out / "compare.json").read_text()), "out": out,
            "pooled": json.loads((pooled / "compare.json").read_text())}


def _rows(cmp: dict, metric: str) -> dict:
    return {r["subtask"]: r for r in cmp["rows"] if r["metric"] == metric}


def test_output_accuracy_values_mcnemar_and_intervals(planted: dict) -> None:
    qs = _questions()
    a = np.array([planted["a"][q] for q in qs], float)
    b = np.array([planted["b"][q] for q in qs], float)
    sub = np.array([q[0] for q in qs])
    rows = _rows(planted["cmp"], "output_accuracy")
    assert list(rows) == [*SIZES, "macro", "micro"]
    for name in SIZES:
        m = sub == name
        row = rows[name]
        assert row["n"] == SIZES[name] and row["values"] == pytest.approx([a[m].mean(), b[m].mean()])
        d = row["differences"][1]
        only_a, only_b = int(((a == 1) & (b == 0) & m).sum()), int(((a == 0) & (b == 1) & m).sum())
        assert (d["only_first_right"], d["only_this_right"]) == (only_a, only_b)
        expected_p = stats.binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
        assert d["mcnemar_p"] == pytest.approx(expected_p, rel=1e-9)
        low, high = _loop_ci(a[m], b[m], None, False, seed=9)
        step = 1.5 / m.sum()  # differences move in steps of 1/n: two Monte Carlo percentiles may sit one apart
        assert d["low"] == pytest.approx(low, abs=step) and d["high"] == pytest.approx(high, abs=step)
    groups = [np.flatnonzero(sub == name) for name in SIZES]
    macro = rows["macro"]
    assert macro["values"] == pytest.approx([np.mean([a[g].mean() for g in groups]), np.mean([b[g].mean() for g in groups])])
    assert "mcnemar_p" not in macro["differences"][1]  # McNemar tests pooled questions, not a mean of means
    low, high = _loop_ci(a, b, groups, True, seed=9)
    assert macro["differences"][1]["low"] == pytest.approx(low, abs=0.02)
    assert macro["differences"][1]["high"] == pytest.approx(high, abs=0.02)
    micro = rows["micro"]
    assert micro["values"] == pytest.approx([a.mean(), b.mean()])
    n_a, n_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    assert micro["differences"][1]["mcnemar_p"] == pytest.approx(stats.binomtest(n_a, n_a + n_b).pvalue, rel=1e-9)
    # the planted gain on Art_Style is far beyond chance; the unchanged-in-expectation subtasks are not
    assert rows[PROBED]["differences"][1]["low"] > 0 and rows[PROBED]["differences"][1]["mcnemar_p"] < 0.01


def test_latent_probe_and_gap_rows(planted: dict) -> None:
    layer = 1
    qs = [q for q in _questions() if q[0] == PROBED and not is_heldout(q[1], 0.3)]
    for metric, score in (("probe_accuracy", lambda p, r: p), ("gap_all", lambda p, r: p and not r)):
        rows = _rows(planted["cmp"], metric)
        assert list(rows) == [PROBED, "macro", "micro"]
        expected = [np.mean([score(planted[f"probe_{k}"][q][layer], planted[k][q]) for q in qs]) for k in "ab"]
        assert rows[PROBED]["n"] == len(qs) and rows[PROBED]["values"] == pytest.approx(expected)
        assert rows["micro"]["values"] == pytest.approx(expected)
    # the runs' own latent summaries agree with what compare read from the records
    res = json.loads((planted["folders"]["a"] / "results.json").read_text())["latent"]["subtasks"][PROBED]
    assert res["layer"] == layer and res["probe_accuracy"] == pytest.approx(_rows(planted["cmp"], "probe_accuracy")[PROBED]["values"][0], abs=1e-6)


def test_seeds_pool_into_one_row(planted: dict) -> None:
    rows = _rows(planted["pooled"], "output_accuracy")
    assert planted["pooled"]["runs"][1]["seeds"] == 2 and planted["pooled"]["runs"][1]["label"] == "pooled"
    for name in SIZES:
        qs = [q for q in _questions() if q[0] == name]
        pooled = np.mean([(planted["b"][q] + planted["b2"][q]) / 2 for q in qs])
        assert rows[name]["values"][1] == pytest.approx(pooled)
        assert "mcnemar_p" not in rows[name]["differences"][1]  # fractions per question: no McNemar


def test_outputs_markdown_png_and_wandb_table(planted: dict, tmp_path: Path) -> None:
    md = (planted["out"] / "compare.md").read_text()
    assert "| **macro** | 120 |" in md and "McNemar p" in md and "prefix - base [95%]" in md
    assert (planted["out"] / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from vkvtrain.wandb_offline import find_run_file, history

    f = planted["folders"]
    assert main(["compare", str(f["a"]), str(f["b"]), "--output_dir", str(tmp_path / "w"), "--n_resamples", "100",
                 "--wandb.project", "cmp", "--wandb.save_dir", str(tmp_path)]) == 0
    for _ in range(50):  # the offline run file keeps growing briefly after finish()
        rows = history(find_run_file(tmp_path))
        if rows:
            break
        time.sleep(0.1)
    (row,) = rows
    table = json.loads(next(tmp_path.glob("wandb/offline-run-*/files/" + row["compare/table/path"])).read_text())
    assert table["columns"][:5] == ["metric", "subtask", "n", "run", "value"]
    assert len(table["data"]) == 2 * len(json.loads((tmp_path / "w" / "compare.json").read_text())["rows"])


@pytest.mark.parametrize("change,named", [
    ({"protocol": {**EvalConfig().protocol(), "max_new_tokens": 16}}, "max_new_tokens: 1024 vs 16"),
    ({"protocol": EvalConfig(mode="likelihood").protocol()}, "mode: 'generate' vs 'likelihood'"),
    ({"resolution": {**RESOLUTION, "crop_size": 336}}, "resolution (crop_size: 384 vs 336)"),
    ({"drop": 1}, "only in"),
    ({"gold_flip": "val_Counting_3"}, "other gold answers: [('Counting', 'val_Counting_3')]"),
])
def test_refuses_runs_on_other_questions_protocols_or_resolutions(planted: dict, tmp_path: Path, capsys,
                                                                   change: dict, named: str) -> None:
    other = _write(tmp_path / "other", planted["b"], **change)
    assert main(["compare", str(planted["folders"]["a"]), str(other), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert named in err and err.startswith("vkvtrain compare: ") and not (tmp_path / "o").exists()
    # seeds of one run are held to the same rule
    assert main(["compare", str(planted["folders"]["a"]), f"{planted['folders']['b']},{other}",
                 "--output_dir", str(tmp_path / "o")]) == 2


def test_bad_arguments(planted: dict, tmp_path: Path, capsys) -> None:
    a = str(planted["folders"]["a"])
    assert main(["compare", a, "--output_dir", str(tmp_path)]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert main(["compare", a, str(tmp_path / "nothing*")]) == 2
    assert "matches no folder" in capsys.readouterr().err
    assert main(["compare", a, str(tmp_path)]) == 2
    assert "not an evaluate output folder" in capsys.readouterr().err
    assert main(["compare", a, a, "--n_resamples", "0"]) == 2
    assert "n_resamples" in capsys.readouterr().err
