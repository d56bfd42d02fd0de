"""Write a comparison as a report directory: ``report.md``, one self-contained ``index.html``
(every image embedded as base64), ``summary.json`` (the :func:`compare` dict), ``curves/*.png`` and
``samples/*.png``. The folder is built under a temporary name and renamed into place, so an
interrupted write leaves the previous report (or none), never half of one. Only a new, empty or
earlier-report folder is written: a file, or a folder holding anything else (a run directory, say),
is refused before anything is written.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil

from plugins.common.errors import InputError
from plugins.report.curves import plot_curves
from plugins.report.tables import Table, fmt, fmt_pct

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
         "th{background:#f3f3f3}.imgs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}"
         "figcaption{font-size:12px;text-align:center}img{max-width:560px}")
CI_MARK = "✔"
INTERVAL_RULE = ("Intervals: percentile bootstrap 95% of mean(variant) − mean(baseline), paired by seed. A metric "
                 "with a per-case table (case.*) is resampled on two levels: seeds (only with at least 3 seeds; "
                 "with fewer they are held fixed), then subjects within each seed, each with all its cases. "
                 "Any other metric gets a seed-level interval, which needs at least 3 seeds. The 'covers' "
                 "column says which variation an interval includes.")


def _mean_std(s: dict | None) -> str:
    if s is None:
        return "—"
    return fmt(s["mean"]) if s["n"] == 1 else f"{fmt(s['mean'])} ± {fmt(s['std'])}"


def _ci(d: dict | None) -> tuple[str, str]:
    if d is None or d["ci"] is None:
        return "—", ""
    return f"[{fmt(d['ci'][0])}, {fmt(d['ci'][1])}]", CI_MARK if d["excludes_zero"] else ""


def value_table(result: dict, which: str = "metrics") -> Table:
    """Long format: per key, the baseline row then one row per variant with its deltas and interval."""
    summaries, diffs = result[which], result["deltas" if which == "metrics" else "cost_deltas"]
    rows = []
    for key, per_group in summaries.items():
        for name, s in per_group.items():
            d = diffs[key].get(name)
            ci, mark = _ci(d)
            base = name == result["baseline"]
            rows.append([key, name, str(s["n"]) if s else "0", _mean_std(s),
                         "" if base else (fmt(d["abs"]) if d else "—"),
                         "" if base else (fmt_pct(d["rel"]) if d else "—"),
                         "" if base else ci, mark, "" if base or not d else (d.get("covers") or "")])
    return Table(["metric", "variant", "n", "mean ± std", "Δ vs baseline", "Δ %", "95% CI of Δ", "CI excludes 0",
                  "covers"], rows)


def config_table(result: dict) -> Table:
    diff = result["config_diff"]
    labels = list(next(iter(diff.values()))) if diff else []
    return Table(["key", *labels], [[k, *(json.dumps(v) for v in diff[k].values())] for k in diff])


def runs_table(result: dict) -> Table:
    rows = [[name, str(r["seed"]), r["path"]] for name, runs in result["groups"].items() for r in runs]
    return Table(["variant", "seed", "run directory"], rows)


def terminal_summary(result: dict) -> str:
    """The final-metrics table as fixed-width text, then one line per variant that was not compared."""
    refused = [f"not compared: {v} {why}" for v, why in result.get("not_comparable", {}).items()]
    return "\n".join([value_table(result).text(), *refused])


def _copy_samples(groups: dict, out_dir: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Per sample key: [(caption, copied path or None)] with the first (lowest-seed) run of each variant."""
    os.makedirs(out_dir, exist_ok=True)
    keys = sorted(set().union(*(r.images for runs in groups.values() for r in runs)))
    out = []
    for key in keys:
        row = []
        for name, runs in groups.items():
            run = min((r for r in runs if key in r.images), key=lambda r: str(r.seed), default=None)
            if run is None:
                row.append((f"{name}: none", None))
                continue
            dest = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}__{key}"))
            shutil.copyfile(run.images[key], dest)
            row.append((f"{name} (seed {run.seed})", dest))
        out.append((key, row))
    return out


def _img_html(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}">'


#: What a report directory holds; an existing ``out_dir`` is replaced only when it holds nothing else.
REPORT_ENTRIES = {"report.md", "index.html", "summary.json", "curves", "samples"}


def _check_out_dir(out_dir: str) -> None:
    """Refuse an ``out_dir`` that is a file or a folder holding anything a report does not write."""
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise InputError(f"--out_dir {out_dir}: exists and is not a folder; choose a new folder for the report")
    foreign = sorted(set(os.listdir(out_dir)) - REPORT_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(f"--out_dir {out_dir}: holds files a report does not write ({shown}); choose a new or "
                         "empty folder (nothing was changed)")


def write_report(groups: dict, result: dict, out_dir: str, title: str, note: str = "") -> str:
    """Write the report directory ``out_dir`` for ``result = compare(groups)``; returns ``index.html``'s path.

    A new, empty or earlier-report ``out_dir`` is written (the old report replaced as a whole); any other
    existing path is refused before anything is written.
    """
    out_dir = os.path.abspath(out_dir)
    _check_out_dir(out_dir)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp)
        curves = plot_curves(groups, os.path.join(tmp, "curves"))
        samples = _copy_samples(groups, os.path.join(tmp, "samples"))
        _write_documents(result, tmp, title, note, curves, samples)
        old = f"{out_dir}.old-{os.getpid()}"
        if os.path.exists(out_dir):
            _check_out_dir(out_dir)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"--out_dir {out_dir}: cannot write the report ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return os.path.join(out_dir, "index.html")


def _sections(result: dict, note: str):
    """(heading, [blocks]); a block is a str paragraph or a Table."""
    paired = ", ".join(f"{v}: {'paired by seed' if p else 'unpaired'}" for v, p in result["paired"].items())
    missing = [f"{k}: missing in {', '.join(v)}" for k, v in result["missing"].items()]
    refused = [f"Not compared: {v} {why}." for v, why in result.get("not_comparable", {}).items()]
    cost = value_table(result, "cost")
    return [
        ("Runs", [note, f"Baseline: {result['baseline']}. {INTERVAL_RULE} {paired or 'No variants'}. "
                        f"{CI_MARK} marks an interval that excludes 0.", *refused, runs_table(result)]),
        ("Configuration differences", [config_table(result) if result["config_diff"] else "No key differs."]),
        ("Final metrics", [value_table(result) if result["metrics"] else "No final metrics found.",
                           *(["Unequal metrics: " + "; ".join(missing)] if missing else [])]),
        ("Step time and peak memory (from the runs' logs)",
         [cost if result["cost"] else "Not logged by these runs."]),
    ]


def _write_documents(result, folder, title, note, curves, samples):
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    md, body = [f"# {title}", ""], [f"<h1>{html.escape(title)}</h1>"]
    for heading, blocks in _sections(result, note):
        md += [f"## {heading}", ""]
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for block in blocks:
            if not block:
                continue
            md += [block.markdown() if isinstance(block, Table) else block, ""]
            body.append(block.html() if isinstance(block, Table) else f"<p>{html.escape(block)}</p>")
    md += ["## Curves", ""]
    body.append("<h2>Curves</h2><div class='imgs'>")
    for caption, path in curves:
        md.append(f"![{caption}]({os.path.relpath(path, folder)})")
        body.append(f"<figure>{_img_html(path)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    body.append("</div>")
    if not curves:
        md.append("No shared curves.")
        body.append("<p>No shared curves.</p>")
    md += ["", "## Samples (the same fixed inputs, side by side)", ""]
    body.append("<h2>Samples (the same fixed inputs, side by side)</h2>")
    for key, row in samples:
        md += [f"### {key}", ""]
        body.append(f"<h3>{html.escape(key)}</h3><div class='imgs'>")
        for caption, path in row:
            md.append(f"![{caption}]({os.path.relpath(path, folder)})" if path else f"*{caption}*")
            body.append(f"<figure>{_img_html(path) if path else ''}<figcaption>{html.escape(caption)}"
                        "</figcaption></figure>")
        body.append("</div>")
        md.append("")
    if not samples:
        md.append("No sample images in these runs.")
        body.append("<p>No sample images in these runs.</p>")
    with open(os.path.join(folder, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(folder, "index.html"), "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
