"""Paired statistics for "did B answer more questions right than A?" on the same questions.

- :func:`paired_bootstrap` -- percentile confidence interval of the difference B - A of a per-question score
  (accuracy, probe accuracy, surfacing gap...), resampling questions with replacement, the same draw for both
  runs (paired). With ``strata`` (e.g. the subtask of each question) the resampling is stratified: each
  stratum's questions are drawn from that stratum only, so every resample keeps the subtask sizes, and the
  statistic is either the unweighted mean of the stratum means (``"macro"``, BLINK's official average) or the
  pooled mean (``"micro"``).
- :func:`mcnemar_exact` -- exact two-sided McNemar test on paired right/wrong outcomes: under H0 the
  discordant questions (right in one run only) split 50/50, so p = min(1, 2 * P[Binomial(b + c, 1/2) <=
  min(b, c)]).

Both are written here (vectorised numpy; the binomial tail in exact integer arithmetic) because no library
offers a stratified paired bootstrap of a macro average; the tests check them against scipy.stats.binomtest,
scipy.stats.bootstrap and a plain-loop numpy bootstrap.

>>> mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 0]).p_value
0.25
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import comb
from typing import Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike

Statistic = Literal["mean", "macro", "micro"]


@dataclass(frozen=True)
class BootstrapResult:
    """difference: statistic(b) - statistic(a) on the questions as given; low/high: the percentile interval."""

    difference: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n: int


@dataclass(frozen=True)
class McNemarResult:
    """b: questions right in run A only; c: right in run B only; p_value: exact two-sided."""

    b: int
    c: int
    p_value: float


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got shapes {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("paired scores are empty: no question is shared by both runs")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired scores hold NaN or inf; drop the questions without a score first")
    return x, y


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    strata: Sequence[object] | None = None,
    statistic: Statistic = "mean",
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``statistic(b) - statistic(a)`` over paired questions.

    Args:
        a, b: (N,) per-question scores of the two runs, question i in both (e.g. 1.0 right, 0.0 wrong; pooled
            seeds give fractions).
        strata: (N,) stratum label of each question (the subtask); required for "macro" and "micro".
        statistic: "mean" (plain paired bootstrap, strata ignored), "macro" (mean over strata of the stratum
            means, strata resampled separately) or "micro" (pooled mean, strata resampled separately).
        n_resamples: bootstrap resamples. seed: numpy Generator seed (same seed, same interval).
        confidence: interval coverage, e.g. 0.95.
    """
    x, y = _paired(a, b)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    diff = y - x  # (N,)
    rng = np.random.default_rng(seed)
    if statistic == "mean":
        groups = [np.arange(diff.size)]
        weights = np.ones(1)
    else:
        if strata is None or len(strata) != diff.size:
            raise ValueError(f"statistic {statistic!r} needs one stratum label per question")
        labels = np.asarray([str(s) for s in strata])
        groups = [np.flatnonzero(labels == name) for name in dict.fromkeys(labels.tolist())]
        sizes = np.array([len(g) for g in groups], dtype=np.float64)
        weights = np.full(len(groups), 1.0 / len(groups)) if statistic == "macro" else sizes / sizes.sum()
    observed = float(sum(w * diff[g].mean() for w, g in zip(weights, groups)))
    resampled = np.zeros(n_resamples)  # (R,)
    for w, g in zip(weights, groups):
        draws = rng.integers(0, len(g), size=(n_resamples, len(g)))  # (R, n_g) indices into the stratum
        resampled += w * diff[g][draws].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return BootstrapResult(observed, float(low), float(high), confidence, n_resamples, int(diff.size))


def mcnemar_exact(a: ArrayLike, b: ArrayLike) -> McNemarResult:
    """Exact two-sided McNemar test of paired binary outcomes ``a`` (run A right?) and ``b`` (run B right?).

    p = min(1, 2 * sum_{k <= min(b, c)} C(n, k) / 2^n) with n = b + c discordant questions; p = 1 when none.
    """
    x, y = _paired(a, b)
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("McNemar's test needs right/wrong (0/1) outcomes per question, not pooled fractions")
    only_a = int(((x == 1) & (y == 0)).sum())
    only_b = int(((x == 0) & (y == 1)).sum())
    n = only_a + only_b
    tail = Fraction(sum(comb(n, k) for k in range(min(only_a, only_b) + 1)), 2**n)
    return McNemarResult(only_a, only_b, float(min(Fraction(1), 2 * tail)))
