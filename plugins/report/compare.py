"""Compare variants (each one or more run directories, one per seed) against the first, the baseline.

``compare(groups)`` -> a JSON-ready dict:

    {"baseline": name, "groups": {name: [{"path", "seed"}]}, "paired": {variant: bool},
     "config_diff": {key: {run label: value}},
     "metrics": {metric: {name: {"n", "mean", "std", "values", "seeds"} | None}},
     "deltas": {metric: {variant: {"abs", "rel", "ci": [lo, hi] | None, "excludes_zero", "covers"}}},
     "cost": same shape as metrics for step_time_s / peak_mem_mb, "cost_deltas": same as deltas,
     "missing": {metric: [run labels without it]},
     "not_comparable": {variant: reason}}

Pairing: a variant is paired with the baseline when both have one run per seed and the same seeds;
a metric is then compared on the seeds where both have it. A metric with a per-case table
(``<folder>/case.<column>``) gets the two-level interval over seeds and cases; any other metric a
seed-level interval (at least 3 seeds). ``covers`` says which variation an interval covers. A variant
validated on other subjects (``split.json``) or scored on other cases than the baseline is not compared:
no deltas, and ``not_comparable`` says why. See :mod:`plugins.report.stats`.
"""

from __future__ import annotations

import math

from plugins.report.config_diff import config_diff
from plugins.report.runs import Run
from plugins.report.stats import (COVERS_SEEDS, NO_SUBJECTS, SUBJECTS, bootstrap_ci, deltas, excludes_zero, summarize,
                                  two_level_ci)


def run_label(name: str, run: Run, runs: list[Run]) -> str:
    return name if len(runs) == 1 else f"{name} (seed {run.seed})"


def _seeds_match(a: list[Run], b: list[Run]) -> bool:
    sa, sb = [r.seed for r in a], [r.seed for r in b]
    return None not in sa and len(set(sa)) == len(sa) and sorted(sa, key=str) == sorted(sb, key=str)


def _nan_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def not_comparable(base: list[Run], variant: list[Run]) -> str | None:
    """Why ``variant`` cannot be compared with ``base`` (other validation subjects or cases), or None."""
    splits = {tuple(r.val_subjects) for r in base + variant if r.val_subjects is not None}
    if len(splits) > 1:
        a, b = (set(x) for x in list(splits)[:2])
        return (f"validated on other subjects than the baseline ({len(a ^ b)} of {len(a | b)} validation "
                "subjects differ between the runs' split.json); train every arm on one split file")
    for key in set().union(*(r.cases for r in base)) & set().union(*(r.cases for r in variant)):
        sets = {frozenset(r.cases[key]) for r in base + variant if key in r.cases}
        if len(sets) > 1:
            return f"scored on other cases than the baseline ({key}: the runs' cases.csv list other cases)"
    return None


def _case_values(runs: list[Run], key: str) -> dict:
    return {r.seed: r.cases[key] for r in runs if key in r.cases}


def _case_unit(runs: list[Run], key: str) -> str:
    """SUBJECTS when every run's table of ``key`` names subjects, else NO_SUBJECTS (each case its own unit)."""
    return SUBJECTS if all(r.case_units.get(key) == SUBJECTS for r in runs if key in r.cases) else NO_SUBJECTS


def _table(groups: dict, values_of, resamples: int, seed: int, paired: dict, refused: dict | None = None):
    """(summaries, deltas, missing) for every key that ``values_of(run)`` (a dict) yields."""
    names = list(groups)
    base_name = names[0]
    keys = sorted(set().union(*(values_of(r) for runs in groups.values() for r in runs)))
    summaries, diffs, missing = {}, {}, {}
    for key in keys:
        summaries[key] = {}
        lacking = []
        for name, runs in groups.items():
            have = [r for r in runs if key in values_of(r)]
            lacking += [run_label(name, r, runs) for r in runs if key not in values_of(r)]
            s = summarize(values_of(r)[key] for r in have)
            summaries[key][name] = None if s is None else {
                "n": s.n, "mean": s.mean, "std": _nan_none(s.std),
                "values": [values_of(r)[key] for r in have], "seeds": [r.seed for r in have]}
        if lacking:
            missing[key] = lacking
        base = summaries[key][base_name]
        diffs[key] = {}
        for name in names[1:]:
            var = summaries[key][name]
            if base is None or var is None or name in (refused or {}):
                diffs[key][name] = None
                continue
            d_abs, d_rel = deltas(base["mean"], var["mean"])
            covers = COVERS_SEEDS
            base_cases, var_cases = _case_values(groups[base_name], key), _case_values(groups[name], key)
            if paired[name] and base_cases and var_cases:
                ci, covers, _ = two_level_ci(base_cases, var_cases, resamples=resamples, seed=seed,
                                             unit=_case_unit(groups[base_name] + groups[name], key))
                if ci is None:
                    covers = None
            elif paired[name]:
                common = [s for s in base["seeds"] if s in var["seeds"]]
                b = [base["values"][base["seeds"].index(s)] for s in common]
                v = [var["values"][var["seeds"].index(s)] for s in common]
                ci = bootstrap_ci(b, v, paired=True, resamples=resamples, seed=seed)
            else:
                ci = bootstrap_ci(base["values"], var["values"], paired=False, resamples=resamples, seed=seed)
            diffs[key][name] = {"abs": d_abs, "rel": _nan_none(d_rel), "ci": None if ci is None else list(ci),
                                "excludes_zero": excludes_zero(ci), "covers": covers if ci is not None else None}
    return summaries, diffs, missing


def compare(groups: dict[str, list[Run]], resamples: int = 10_000, seed: int = 0) -> dict:
    """The comparison of ``groups`` (ordered: the first is the baseline); see the module docstring."""
    names = list(groups)
    base_runs = groups[names[0]]
    paired = {n: _seeds_match(base_runs, groups[n]) for n in names[1:]}
    refused = {n: why for n in names[1:] if (why := not_comparable(base_runs, groups[n]))}
    labels = [(run_label(n, r, runs), r) for n, runs in groups.items() for r in runs]
    diff = config_diff([r.config for _, r in labels])
    metrics, metric_deltas, missing = _table(groups, lambda r: r.final, resamples, seed, paired, refused)
    cost, cost_deltas, _ = _table(groups, lambda r: r.cost, resamples, seed, paired)
    return {
        "baseline": names[0],
        "groups": {n: [{"path": r.path, "seed": r.seed} for r in runs] for n, runs in groups.items()},
        "paired": paired,
        "config_diff": {k: {label: v for (label, _), v in zip(labels, values)} for k, values in diff.items()},
        "metrics": metrics, "deltas": metric_deltas, "cost": cost, "cost_deltas": cost_deltas,
        "missing": missing, "not_comparable": refused,
    }
