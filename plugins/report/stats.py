"""Per-variant summaries, deltas against the baseline and bootstrap confidence intervals.

For a metric with baseline values ``b`` (one per seed) and variant values ``v``:

    delta_abs = mean(v) - mean(b)        delta_rel = delta_abs / |mean(b)|
    paired (the seed sets match):  d_i = v_i - b_i (same seed), statistic = mean(d*) over resamples d*
    unpaired:                      statistic = mean(v*) - mean(b*), each group resampled on its own

The 95% interval is the percentile interval of that bootstrap distribution (inverted-CDF quantiles
at 2.5% and 97.5%). A seed-level interval needs at least ``MIN_SEEDS`` (3) values per group: over two
seeds a percentile bootstrap is just their range. With few seeds the distribution is enumerated
exactly (every index tuple, each equally likely: n^n tuples paired, n^n * m^m unpaired, when at most
``EXACT_LIMIT``); otherwise ``scipy.stats.bootstrap`` draws ``resamples`` with a fixed seed.

When the runs wrote per-case tables, :func:`two_level_ci` takes the interval over seeds *and* cases,
paired by seed and case: d_sc = v_sc - b_sc (or v_sc - reference), statistic = mean over seeds of the
mean over cases. Each resample draws seeds with replacement (only with at least ``MIN_SEEDS`` seeds;
with fewer the seeds are kept as they are and the interval covers case variation only, given those
seeds), then, within each drawn seed, subjects with replacement, each bringing all its cases (slices of
one subject are not independent).

An AUC is not a mean over cases: :func:`auc_ci` takes its interval by resampling seeds and, within each
seed, the positive and the negative subjects separately (stratified), one case per subject.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

EXACT_LIMIT = 200_000
LEVEL = 0.95
MIN_SEEDS = 3
COVERS_SEEDS = "seeds"
COVERS_BOTH = "seeds and cases ({unit})"
COVERS_CASES = "cases ({unit}) only; fewer than 3 seeds, so the seeds are held fixed"
#: What a per-case table's cases are grouped by, for an interval's ``covers`` label.
SUBJECTS, NO_SUBJECTS = "subjects", "no subject column"


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof 1); NaN for one value


def summarize(values) -> Summary | None:
    values = np.asarray(list(values), dtype=float)
    if values.size == 0:
        return None
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return Summary(int(values.size), float(values.mean()), std)


def deltas(base: float, value: float) -> tuple[float, float]:
    """``(value - base, (value - base) / |base|)``; the relative delta is NaN for base 0."""
    diff = value - base
    return diff, (diff / abs(base) if base != 0 else math.nan)


def _all_means(values: np.ndarray) -> np.ndarray:
    """Means of every length-n index tuple of ``values`` (n^n of them)."""
    n = len(values)
    idx = np.array(list(itertools.product(range(n), repeat=n)))
    return values[idx].mean(axis=1)


def _quantiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_ci(base, variant, paired: bool, resamples: int = 10_000, seed: int = 0,
                 level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile interval of mean(variant) - mean(base); ``base`` None compares with 0 (one sample).

    ``paired`` needs equal lengths, element i of both from the same seed. None when a group has fewer
    than ``MIN_SEEDS`` values.
    """
    v = np.asarray(variant, dtype=float)
    b = None if base is None else np.asarray(base, dtype=float)
    if paired and b is not None:
        if len(b) != len(v):
            raise ValueError("paired bootstrap needs one baseline value per variant value")
        v, b = v - b, None
    if len(v) < MIN_SEEDS or (b is not None and len(b) < MIN_SEEDS):
        return None
    exact_size = len(v) ** len(v) * (1 if b is None else len(b) ** len(b))
    if exact_size <= EXACT_LIMIT:
        means = _all_means(v)
        if b is not None:
            means = (means[:, None] - _all_means(b)[None, :]).ravel()
        return _quantiles(means, level)
    rng = np.random.default_rng(seed)
    if b is None:
        res = sps.bootstrap((v,), np.mean, n_resamples=resamples, confidence_level=level, method="percentile",
                            random_state=rng, vectorized=True)
    else:
        res = sps.bootstrap((v, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), n_resamples=resamples,
                            confidence_level=level, method="percentile", random_state=rng, vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def excludes_zero(ci) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def two_level_ci(base: dict | None, variant: dict, reference: float = 0.0, resamples: int = 10_000, seed: int = 0,
                 level: float = LEVEL, unit: str = SUBJECTS):
    """``(interval, covers, n_cases)`` of the paired difference over seeds and cases; ``(None, reason, n)`` if none.

    ``base``/``variant``: ``{seed: {case: (subject, value)}}``; ``base`` None compares with ``reference``.
    Only seeds and cases present in both are used. ``unit`` names what a case's subject is in ``covers``
    (e.g. "timing rounds" when each case is a round of a benchmark).
    """
    seeds = sorted(variant if base is None else set(base) & set(variant), key=str)
    diffs = {}
    for s in seeds:
        cases = variant[s] if base is None else {c: variant[s][c] for c in set(base[s]) & set(variant[s])}
        diffs[s] = {c: (subj, value - (reference if base is None else base[s][c][1]))
                    for c, (subj, value) in cases.items()}
    subjects = sorted({subj for d in diffs.values() for subj, _ in d.values()})
    n_cases = sum(len(d) for d in diffs.values())
    if not seeds or len(subjects) < 2:
        return None, "fewer than 2 subjects with paired cases", n_cases
    col = {subj: j for j, subj in enumerate(subjects)}
    sums, counts = np.zeros((len(seeds), len(subjects))), np.zeros((len(seeds), len(subjects)))
    for i, s in enumerate(seeds):
        for subj, d in diffs[s].values():
            sums[i, col[subj]] += d
            counts[i, col[subj]] += 1
    rng = np.random.default_rng(seed)
    n_seeds, n_subj = len(seeds), len(subjects)
    if n_seeds >= MIN_SEEDS:
        seed_idx, covers = rng.integers(0, n_seeds, (resamples, n_seeds)), COVERS_BOTH.format(unit=unit)
    else:
        seed_idx, covers = np.broadcast_to(np.arange(n_seeds), (resamples, n_seeds)), COVERS_CASES.format(unit=unit)
    subj_idx = rng.integers(0, n_subj, (resamples, n_seeds, n_subj))
    total = sums[seed_idx[..., None], subj_idx].sum(-1)
    count = counts[seed_idx[..., None], subj_idx].sum(-1)
    with warnings.catch_warnings():  # a resample whose seeds drew no case of any subject: NaN, dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        stat = np.nanmean(np.where(count > 0, total / np.maximum(count, 1), np.nan), axis=1)
    return _quantiles(stat[np.isfinite(stat)], level), covers, n_cases


COVERS_STRATIFIED = "subjects within each class only; fewer than 3 seeds, so the seeds are held fixed"
COVERS_SEEDS_STRATIFIED = "seeds and subjects within each class"


def auc_ci(scores: dict, labels: dict, reference: float = 0.5, resamples: int = 10_000, seed: int = 0,
           level: float = LEVEL):
    """``(aucs, interval, covers)``: each seed's AUC of ``scores`` for ``labels`` and the interval of their mean
    minus ``reference``; ``interval`` None (``covers`` the reason) when it cannot be taken.

    ``scores``/``labels``: ``{seed: {case: (subject, value)}}``, one case per subject, labels 0/1 (1 positive).
    AUC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2 over every positive-negative pair (Mann-Whitney, the area
    under the ROC curve). Each resample draws seeds with replacement (only with at least ``MIN_SEEDS``), then,
    within each drawn seed, its positive and its negative subjects with replacement, each class keeping its
    size (stratified: every resample holds both classes, as the split did).
    """
    pairs = {}
    for s in sorted(set(scores) & set(labels), key=str):
        cases = sorted(set(scores[s]) & set(labels[s]))
        if len({scores[s][c][0] for c in cases}) != len(cases):
            return {}, None, "an AUC interval needs one case per subject"
        y = np.array([labels[s][c][1] for c in cases])
        x = np.array([scores[s][c][1] for c in cases], dtype=float)
        pos, neg = x[y == 1], x[y == 0]
        if not len(pos) or not len(neg) or len(pos) + len(neg) != len(y):
            return {}, None, f"seed {s}: AUC needs labels 0 and 1, both present"
        pairs[s] = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # [n_pos, n_neg]
    if not pairs:
        return {}, None, "no seed with both scores and labels"
    aucs = {s: float(w.mean()) for s, w in pairs.items()}
    rng = np.random.default_rng(seed)
    seeds = list(pairs)
    if len(seeds) >= MIN_SEEDS:
        seed_idx, covers = rng.integers(0, len(seeds), (resamples, len(seeds))), COVERS_SEEDS_STRATIFIED
    else:
        seed_idx, covers = np.broadcast_to(np.arange(len(seeds)), (resamples, len(seeds))), COVERS_STRATIFIED
    stat = np.zeros(resamples)
    for slot in range(len(seeds)):
        for i, s in enumerate(seeds):
            rows = np.flatnonzero(seed_idx[:, slot] == i)
            w = pairs[s]
            p = rng.integers(0, w.shape[0], (len(rows), w.shape[0]))
            n = rng.integers(0, w.shape[1], (len(rows), w.shape[1]))
            stat[rows] += w[p[:, :, None], n[:, None, :]].mean(axis=(1, 2))
    return aucs, _quantiles(stat / len(seeds) - reference, level), covers
