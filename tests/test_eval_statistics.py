"""Paired statistics against independent computations: scipy.stats.binomtest, scipy.stats.bootstrap, a plain loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vkvtrain.evaluation.statistics import mcnemar_exact, paired_bootstrap


def _pairs(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    order = np.random.default_rng(only_a * 1000 + only_b).permutation(len(a))
    return np.array(a)[order], np.array(b)[order]


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (0, 1), (1, 0), (3, 0), (5, 5), (7, 2), (2, 19), (40, 61), (0, 120)])
def test_mcnemar_equals_scipy_binomtest(only_a: int, only_b: int) -> None:
    a, b = _pairs(only_a, only_b, both=11, neither=6)
    result = mcnemar_exact(a, b)
    assert (result.b, result.c) == (only_a, only_b)
    expected = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert mcnemar_exact(b, a).p_value == result.p_value  # symmetric


def test_mcnemar_refuses_pooled_fractions_and_unpaired_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([1, 0.5], [0, 1])
    with pytest.raises(ValueError, match="one length"):
        mcnemar_exact([1, 0, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        mcnemar_exact([], [])


def test_unstratified_interval_matches_scipy_paired_bootstrap() -> None:
    rng = np.random.default_rng(4)
    a = (rng.random(150) < 0.55).astype(float)
    b = np.where(rng.random(150) < 0.2, 1.0 - a, a)  # B flips 20% of A's answers
    ours = paired_bootstrap(a, b, n_resamples=20_000, seed=1)
    theirs = stats.bootstrap((a, b), lambda x, y, axis=-1: (y - x).mean(axis=axis), paired=True,
                             vectorized=True, n_resamples=20_000, method="percentile", random_state=7)
    assert ours.difference == pytest.approx((b - a).mean())
    # Two Monte Carlo estimates of the same percentiles: equal within resampling noise and one 1/150 step.
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=0.01)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=0.01)
    assert ours.low < ours.difference < ours.high


def _loop_bootstrap(a: np.ndarray, b: np.ndarray, strata: list[str], macro: bool, R: int, seed: int) -> tuple[float, float]:
    """Plain-loop stratified paired bootstrap: per resample, draw each subtask's questions with replacement."""
    rng = np.random.default_rng(seed)
    names = sorted(set(strata))
    members = {s: [i for i, t in enumerate(strata) if t == s] for s in names}
    stats_ = []
    for _ in range(R):
        per = {}
        for s in names:
            pick = [members[s][j] for j in rng.integers(0, len(members[s]), len(members[s]))]
            per[s] = (sum(b[i] - a[i] for i in pick), len(pick))
        if macro:
            stats_.append(np.mean([d / n for d, n in per.values()]))
        else:
            stats_.append(sum(d for d, _ in per.values()) / sum(n for _, n in per.values()))
    return tuple(np.percentile(stats_, [2.5, 97.5]))


@pytest.mark.parametrize("statistic", ["macro", "micro"])
def test_stratified_interval_matches_a_plain_loop(statistic: str) -> None:
    rng = np.random.default_rng(0)
    sizes = {"Art_Style": 30, "Counting": 60, "Jigsaw": 12}
    strata = [s for s, n in sizes.items() for _ in range(n)]
    shuffle = rng.permutation(len(strata))
    strata = [strata[i] for i in shuffle]
    rate_a = {"Art_Style": 0.4, "Counting": 0.7, "Jigsaw": 0.5}
    gain = {"Art_Style": 0.3, "Counting": 0.0, "Jigsaw": -0.2}
    a = np.array([float(rng.random() < rate_a[s]) for s in strata])
    b = np.array([float(rng.random() < rate_a[s] + gain[s]) for s in strata])
    ours = paired_bootstrap(a, b, strata, statistic, n_resamples=20_000, seed=3)
    per = {s: (b - a)[[t == s for t in strata]].mean() for s in sizes}
    expected = np.mean(list(per.values())) if statistic == "macro" else (b - a).mean()
    assert ours.difference == pytest.approx(expected)
    low, high = _loop_bootstrap(a, b, strata, statistic == "macro", 3_000, seed=11)
    assert ours.low == pytest.approx(low, abs=0.02) and ours.high == pytest.approx(high, abs=0.02)
    # stratification keeps subtask sizes: the macro interval is not the pooled one
    if statistic == "macro":
        pooled = paired_bootstrap(a, b, n_resamples=20_000, seed=3)
        assert abs(pooled.difference - ours.difference) > 0.01


def test_seeded_and_validated() -> None:
    a, b = _pairs(9, 17, 30, 20)
    one = paired_bootstrap(a, b, n_resamples=500, seed=5)
    assert one == paired_bootstrap(a, b, n_resamples=500, seed=5)
    assert one != paired_bootstrap(a, b, n_resamples=500, seed=6)
    assert paired_bootstrap(a, a, n_resamples=100).low == 0.0 == paired_bootstrap(a, a, n_resamples=100).high
    with pytest.raises(ValueError, match="stratum label"):
        paired_bootstrap(a, b, statistic="macro")
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(a, b, confidence=1.0)
