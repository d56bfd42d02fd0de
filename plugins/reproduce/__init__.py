"""One command that reproduces every seed's claim on the embedded data.

``reproduce(ctx, keys)`` runs the jobs of the comparisons of :data:`COMPARISONS` (the project's scripts,
several at once where they do not depend on each other, resumable), writes each comparison's report with
:mod:`plugins.report` into ``ROOT/<comparison>/``, checks that its baseline beats the trivial reference (the competence gate) and
judges its claim (:mod:`plugins.reproduce.claims`), and writes
``ROOT/index.html``/``index.md`` (verdicts, links, scale) and ``ROOT/verdicts.json``.
"""

from __future__ import annotations

import json
import os
import shlex

from plugins.common.errors import InputError
from plugins.common.run_log import write_json_atomic
from plugins.report import compare, read_groups, terminal_summary, write_report
from plugins.reproduce.claims import (check_line, claim_verdict, evaluate_check, evaluate_gate, evaluate_reported,
                                      gate_line, reported_line)
from plugins.reproduce.comparisons import COMPARISONS, DEFAULT_SEEDS, SCALES, Context, parse_extra_flags
from plugins.reproduce.index import write_index
from plugins.reproduce.jobs import Job, JobFailed, folder_lock, is_done, job_seconds, run_jobs

__all__ = ["COMPARISONS", "DEFAULT_SEEDS", "SCALES", "Context", "Job", "JobFailed", "check_scale", "parse_extra_flags",
           "reproduce"]

SCALE_FILE = "scale.json"
#: Comparisons whose steps are queued first: the backbone benchmark is one long step (every backbone trained in
#: one process), so it starts early and the other comparisons' steps fill the remaining cores.
START_FIRST = ("backbones",)


def check_scale(ctx: Context) -> None:
    """Refuse to resume a folder whose finished steps ran under another scale, data folder or extra flags (they
    would be reused, mixing runs); record them for a new folder."""
    path = os.path.join(ctx.root, SCALE_FILE)
    record = {"scale": ctx.scale, "data_dir": ctx.data_dir, "extra_flags": ctx.extra_flags}
    if os.path.exists(path):
        with open(path) as f:  # folders from before data_dir and extra_flags were recorded: their steps ran with none
            saved = {**record, "extra_flags": {}, **json.load(f)}
        if saved["scale"] != ctx.scale:
            raise InputError(f"{path}: this folder holds a {saved['scale']!r} reproduction; --out_dir another folder "
                             f"for the {ctx.scale!r} scale")
        if saved["data_dir"] != ctx.data_dir:
            raise InputError(f"{path}: this folder's steps read --data_dir {saved['data_dir']}, not {ctx.data_dir}; "
                             f"--out_dir another folder")
        if saved["extra_flags"] != ctx.extra_flags:
            raise InputError(f"{path}: this folder's steps ran with extra flags {extra_note(saved['extra_flags'])}, "
                             f"not {extra_note(ctx.extra_flags)}; --out_dir another folder")
    os.makedirs(ctx.root, exist_ok=True)
    write_json_atomic(path, record)  # main checks outside the folder lock: a reader never sees half a file


def extra_note(extra_flags: dict) -> str:
    return "; ".join(f"{key}: {shlex.join(flags)}" for key, flags in extra_flags.items()) or "(none)"


def scale_note(ctx: Context) -> str:
    capped = "".join(f"; {key}: {', '.join(map(str, ctx.seeds_of(key)))}" for key in ctx.settings["max_seeds"])
    extra = f" Extra flags: {extra_note(ctx.extra_flags)}." if ctx.extra_flags else ""
    return f"Scale: {ctx.scale} scale: {SCALES[ctx.scale]}. Seeds: {', '.join(map(str, ctx.seeds))}{capped}.{extra}"


def report_comparison(ctx: Context, key: str, jobs: list[Job], runs: dict, resamples: int = 10_000) -> dict:
    """Write the report of one comparison whose ``jobs`` have run; returns its index entry."""
    comp = COMPARISONS[key]
    groups = read_groups([f"{v}={','.join(runs[v])}" for v in comp.variants if v in runs])
    result = compare(groups, resamples=resamples)
    report = os.path.join(ctx.root, key)
    write_report(groups, result, report, comp.title, scale_note(ctx) + f" Claim: {comp.claim}")
    gates = [evaluate_gate(g, groups) for g in comp.gates]
    reported = [evaluate_reported(r, groups) for r in comp.reported]
    curves = {k: [p for x in ("step", "epoch") if os.path.exists(p := os.path.join(report, "curves", f"{x}_{k}.png"))]
              for k in comp.curves}
    checks = []
    for check in comp.checks:
        why = result["not_comparable"].get(check.variant) or result["not_comparable"].get(check.baseline)
        checks.append({"check": check.describe(), "verdict": "inconclusive", "variant_mean": None, "note": why}
                      if why else evaluate_check(check, groups, resamples=resamples))
    print(f"\n{comp.title}\n{terminal_summary(result)}")
    wall, cpu = job_seconds(ctx.root, jobs)
    entry = {"key": key, "title": comp.title, "claim": comp.claim, "verdict": claim_verdict(checks, gates),
             "gates": gates, "reported": reported, "checks": checks, "report": report,
             "curves": [p for paths in curves.values() for p in paths],
             "missing_curves": [k for k, paths in curves.items() if not paths],
             "seconds": wall, "cpu_seconds": cpu}
    print(f"verdict: {entry['verdict']}\n" + "\n".join(f"  {line}" for line in
                                                        [*map(gate_line, gates), *map(reported_line, reported),
                                                         *map(check_line, checks)]))
    return entry


def reproduce(ctx: Context, keys: list[str], threads: int = 1, workers: int = 1, resamples: int = 10_000) -> str:
    """Run the jobs of the comparisons ``keys`` (up to ``workers`` at once), report each comparison whose jobs all
    finished, and write the index; returns ``index.html``'s path (raises the first failed step's error after
    reporting the comparisons it did not stop).

    The folder's earlier verdicts of other comparisons (same scale and seeds) stay in ``verdicts.json`` and
    the index, so the table can be filled one comparison at a time (``--only``).
    """
    with folder_lock(ctx.root):
        check_scale(ctx)
        plans = {key: COMPARISONS[key].plan(ctx) for key in keys}
        order = sorted(keys, key=lambda k: k not in START_FIRST)
        unique = {job.name: job for k in order for job in plans[k][0]}  # the shared SR VAE runs once
        failure = None
        try:
            run_jobs(list(unique.values()), ctx.root, desc="reproduce", threads=threads, workers=workers)
        except JobFailed as err:
            failure = err
        path = os.path.join(ctx.root, "verdicts.json")
        entries = {}
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("seeds") == ctx.seeds:
                entries = {e["key"]: e for e in saved["comparisons"]}
        finished = [key for key, (jobs, _) in plans.items() if all(is_done(ctx.root, job) for job in jobs)]
        for key in finished:
            entries[key] = report_comparison(ctx, key, *plans[key], resamples)
        if finished:
            ordered = [entries[k] for k in COMPARISONS if k in entries]
            write_json_atomic(path, {"scale": ctx.scale, "extra_flags": ctx.extra_flags, "seeds": ctx.seeds,
                                     "comparisons": ordered}, indent=2)
            write_index(ctx.root, ordered, scale_note(ctx))
    if failure is not None:
        raise failure
    return os.path.join(ctx.root, "index.html")
