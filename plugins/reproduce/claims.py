"""Verdicts on a seed's claim from the runs of its comparison, behind a competence gate.

A claim first names its :class:`Gate`s (and :class:`Reported` figures shown beside them, which gate
nothing): the baseline must beat a trivial reference or reach a fixed bar (FLAIR thresholding,
a random map, bicubic upsampling, the all-black reconstruction) measured on the same validation cases,
``mean(arm metric) > factor * mean(reference) + margin`` (``<`` for ``lower``). While any gate fails the
verdict is "untestable at this scale", with the numbers: an experiment whose baseline never learned
its task cannot speak against a claim.

Then a list of :class:`Check`s. A check compares ``metric`` of ``variant`` with ``baseline``
(paired by seed when the seeds match) or, with ``baseline=None``, with the constant ``reference``:
diff = mean(variant) - mean(baseline or reference), and its bootstrap 95% interval [lo, hi]. A
metric with per-case tables (``<folder>/case.<column>``) gets the two-level interval over seeds and
cases (:func:`plugins.report.stats.two_level_ci`); any other a seed-level interval, which needs at
least 3 seeds (:func:`plugins.report.stats.bootstrap_ci`); ``covers`` records which variation the
interval includes. With s = +1 for ``higher``, -1 for ``lower``,
[a, b] = sorted(s*lo, s*hi) (the interval on the claimed side's axis):

- "raises" checks (``margin`` = 0), with ``min_effect`` e >= 0, the smallest difference that matters:
  supported if a > 0 and a >= e; not supported if b < 0 (the other way) or 0 < b < e (a real but
  negligible difference); inconclusive otherwise (the interval holds 0, or straddles e).
- "matches/keeps" checks (``margin`` m > 0, not worse by more than m):
  supported if a > -m; not supported if b < -m; inconclusive otherwise.
- inconclusive without an interval (fewer than 3 seeds and no per-case table) or a missing metric.

A check marked ``exact`` compares a quantity without sampling variation (a parameter count): its interval
is [diff, diff]. A check with ``labels`` scores a classifier: ``metric`` is a per-case score column (one
case per subject), ``labels`` the per-case 0/1 column, and the statistic each seed's AUC against the
constant ``reference``, with a stratified interval over seeds and subjects (:func:`plugins.report.stats.auc_ci`).

The claim is supported when every check is, not supported when any check is not, else inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugins.report.stats import COVERS_SEEDS, MIN_SEEDS, auc_ci, bootstrap_ci, two_level_ci
from plugins.report.tables import fmt

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
COVERS_EXACT = "nothing: an exact quantity"
UNTESTABLE = "untestable at this scale"


@dataclass
class Gate:
    """``arm``'s ``metric`` must beat ``factor * reference + margin``; the reference is ``reference_metric``
    of the same runs (e.g. FLAIR thresholding scored by the same evaluation) or the constant ``reference``."""

    arm: str
    metric: str
    reference_metric: str | None = None
    reference: float = 0.0
    factor: float = 1.0
    margin: float = 0.0
    direction: str = "higher"
    label: str = ""

    def describe(self) -> str:
        ref = self.label or self.reference_metric or fmt(self.reference)
        bar = " ".join(p for p in (f"{fmt(self.factor)} x" if self.factor != 1 else "", ref,
                                   f"+ {fmt(self.margin)}" if self.margin else "") if p)
        return f"{self.arm} {self.metric} {'>' if self.direction == 'higher' else '<'} {bar}"


def evaluate_gate(gate: Gate, groups: dict) -> dict:
    """``{"gate", "metric", "passed", "value", "threshold", "note"?}`` from the means over ``gate.arm``'s runs."""
    out = {"gate": gate.describe(), "metric": gate.metric, "passed": False, "value": None, "threshold": None}
    runs = [r for r in groups.get(gate.arm, []) if gate.metric in r.final]
    refs = [r.final[gate.reference_metric] for r in runs if gate.reference_metric in r.final]
    if not runs or (gate.reference_metric and len(refs) != len(runs)):
        out["note"] = f"missing in {gate.arm}"
        return out
    value = sum(r.final[gate.metric] for r in runs) / len(runs)
    ref = sum(refs) / len(refs) if gate.reference_metric else gate.reference
    threshold = gate.factor * ref + gate.margin
    passed = value > threshold if gate.direction == "higher" else value < threshold
    out.update(passed=bool(passed), value=value, threshold=threshold)
    return out


@dataclass
class Reported:
    """A figure shown beside the gates without gating: the mean of ``metric`` over ``arm``'s runs."""

    arm: str
    metric: str
    label: str


def evaluate_reported(item: Reported, groups: dict) -> dict:
    values = [r.final[item.metric] for r in groups.get(item.arm, []) if item.metric in r.final]
    return {"label": item.label, "arm": item.arm, "metric": item.metric,
            "value": sum(values) / len(values) if values else None}


def reported_line(r: dict) -> str:
    value = "missing" if r["value"] is None else fmt(r["value"])
    return f"reported: {r['label']} ({r['arm']} {r['metric']}): {value}"


def gate_line(g: dict) -> str:
    if g["value"] is None:
        return f"gate {g['gate']}: {g.get('note', 'no values')} → fails"
    return f"gate {g['gate']}: {fmt(g['value'])} vs {fmt(g['threshold'])} → {'passes' if g['passed'] else 'fails'}"


@dataclass
class Check:
    metric: str
    variant: str
    baseline: str | None
    direction: str = "higher"  # or "lower"
    margin: float = 0.0
    reference: float = 0.0
    min_effect: float = 0.0
    labels: str | None = None  # a per-case 0/1 column: the statistic is the AUC of ``metric`` for it
    exact: bool = False  # a quantity without sampling variation (a parameter count): the interval is Δ itself
    unit: str = "subjects"  # what the per-case table's subjects are, for ``covers`` (e.g. "timing rounds")

    def __post_init__(self):
        if self.labels and self.baseline is not None:
            raise ValueError("an AUC check compares with its constant reference (baseline None)")

    def describe(self) -> str:
        other = self.baseline if self.baseline is not None else fmt(self.reference)
        if self.labels:
            return f"AUC of {self.metric} for {self.labels}: {self.variant} {self.direction} than {other}" + (
                f" by at least {fmt(self.min_effect)}" if self.min_effect else "")
        if self.margin:
            side = "not lower" if self.direction == "higher" else "not higher"
            return f"{self.metric}: {self.variant} {side} than {other} by more than {fmt(self.margin)}"
        by = f" by at least {fmt(self.min_effect)}" if self.min_effect else ""
        return f"{self.metric}: {self.variant} {self.direction} than {other}{by}"


def _values(runs, metric):
    return {r.seed: r.final[metric] for r in runs if metric in r.final}


def _cases(runs, metric):
    return {r.seed: r.cases[metric] for r in runs if metric in r.cases}


def evaluate_check(check: Check, groups: dict, resamples: int = 10_000, seed: int = 0) -> dict:
    """``{"check", "verdict", "n", "variant_mean", "other_mean", "diff", "ci", "covers"}`` for ``groups``."""
    out = {"check": check.describe(), "verdict": INCONCLUSIVE, "n": 0, "variant_mean": None,
           "other_mean": None, "diff": None, "ci": None, "covers": None}
    if check.labels:
        return _evaluate_auc(check, groups, out, resamples, seed)
    var = _values(groups.get(check.variant, []), check.metric)
    if check.baseline is None:
        base, paired = None, False
    else:
        base = _values(groups.get(check.baseline, []), check.metric)
        if not base:
            out["note"] = f"missing in {check.baseline}"
            return out
        paired = None not in base and set(base) == set(var)
    if not var:
        out["note"] = f"missing in {check.variant}"
        return out
    keys = sorted(var, key=str)
    v = [var[k] for k in keys]
    b = [base[k] for k in keys] if paired else (list(base.values()) if base else None)
    other = sum(b) / len(b) if b else check.reference
    out.update(n=len(v), variant_mean=sum(v) / len(v), other_mean=other, diff=sum(v) / len(v) - other)
    if check.exact:
        return _with_interval(out, check, (out["diff"], out["diff"]), COVERS_EXACT)
    var_cases = _cases(groups.get(check.variant, []), check.metric)
    base_cases = None if check.baseline is None else _cases(groups.get(check.baseline, []), check.metric)
    if var_cases and (base_cases is None and check.baseline is None or base_cases and paired):
        ci, covers, n_cases = two_level_ci(base_cases, var_cases, reference=check.reference,
                                           resamples=resamples, seed=seed, unit=check.unit)
        out["n_cases"] = n_cases
    else:
        ci = bootstrap_ci(b, [x - (check.reference if b is None else 0) for x in v], paired=paired,
                          resamples=resamples, seed=seed)
        covers = COVERS_SEEDS if ci is not None else f"fewer than {MIN_SEEDS} seeds and no per-case table"
    return _with_interval(out, check, ci, covers)


def _evaluate_auc(check: Check, groups: dict, out: dict, resamples: int, seed: int) -> dict:
    runs = groups.get(check.variant, [])
    scores, labels = _cases(runs, check.metric), _cases(runs, check.labels)
    if not scores or not labels:
        out["note"] = f"missing in {check.variant}: per-case {check.metric if not scores else check.labels}"
        return out
    aucs, ci, covers = auc_ci(scores, labels, check.reference, resamples=resamples, seed=seed)
    if aucs:
        mean = sum(aucs.values()) / len(aucs)
        out.update(n=len(aucs), variant_mean=mean, other_mean=check.reference, diff=mean - check.reference,
                   n_subjects=sum(len(scores[s]) for s in aucs))
    return _with_interval(out, check, ci, covers)


def _with_interval(out: dict, check: Check, ci, covers: str) -> dict:
    """``out`` with the interval and its verdict, or the reason there is none."""
    if ci is None:
        out["note"] = covers
        return out
    out["ci"], out["covers"] = list(ci), covers
    s = 1 if check.direction == "higher" else -1
    out["verdict"] = decide(sorted((s * ci[0], s * ci[1])), check.margin, check.min_effect)
    return out


def decide(interval, margin: float, min_effect: float) -> str:
    """The verdict for an interval [a, b] of the difference, oriented so that the claimed side is positive."""
    a, b = interval
    if margin > 0:
        return SUPPORTED if a > -margin else NOT_SUPPORTED if b < -margin else INCONCLUSIVE
    if a > 0 and a >= min_effect:
        return SUPPORTED
    if b < 0 or 0 < b < min_effect:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def claim_verdict(results: list[dict], gates: list[dict] = ()) -> str:
    """Untestable while a gate fails; else supported when every check is, not supported when any is not."""
    if not all(g["passed"] for g in gates):
        return UNTESTABLE
    verdicts = [r["verdict"] for r in results]
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return NOT_SUPPORTED if NOT_SUPPORTED in verdicts else INCONCLUSIVE


def check_line(r: dict) -> str:
    """One line with the numbers: means, difference, interval, n."""
    if r["variant_mean"] is None:
        return f"{r['check']}: {r.get('note', 'no values')}"
    ci = (f"no interval ({r.get('note')})" if r["ci"] is None
          else f"95% CI [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}] over {r['covers']}")
    cases = (f", {r['n_cases']} paired cases" if r.get("n_cases")
             else f", {r['n_subjects']} subjects" if r.get("n_subjects") else "")
    return (f"{r['check']}: {fmt(r['variant_mean'])} vs {fmt(r['other_mean'])}, Δ {fmt(r['diff'])}, "
            f"{ci}, n={r['n']} seed(s){cases} → {r['verdict']}")
