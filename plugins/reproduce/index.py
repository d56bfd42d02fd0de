"""The reproduction's index page: one line per claim (verdict), its competence gates and checks with
their numbers, a link to each comparison's report, the validation curves of every arm (the report's PNGs),
the scale that produced it and the time each took."""

from __future__ import annotations

import html
import os

from plugins.reproduce.claims import check_line, gate_line, reported_line
from plugins.report.tables import fmt

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}li{margin:.3em 0}"
         ".supported{color:#1a7f37}.not{color:#b42318}.inconclusive{color:#8a6d00}code{font-size:12px}")


def _css(verdict: str) -> str:
    return {"supported": "supported", "not supported": "not"}.get(verdict, "inconclusive")


GATE_RULE = ("A verdict is drawn only when the claim's baseline beats its trivial reference (the gate); otherwise "
             "the claim is untestable at this scale. Intervals: see each report (two-level bootstrap over seeds "
             "and cases where per-case tables exist; seed-level intervals need at least 3 seeds).")


def _figure(value) -> str:
    return "-" if value is None else fmt(value)


def summary_table(entries: list[dict]) -> list[str]:
    """Markdown rows, one per check: claim, the baseline's gate figures, the check's means, difference,
    interval and what it covers, the claim's verdict, and the comparison's steps' time (wall summed over steps,
    which may run side by side, and CPU)."""
    rows = ["| claim | baseline competence (value vs bar) | check | variant vs other | Δ [95% CI] (covers) "
            "| verdict | steps' time (wall summed / CPU) |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        gates = "; ".join(f"{g.get('metric', g['gate'])} {_figure(g['value'])} vs {_figure(g['threshold'])} "
                          f"{'ok' if g['passed'] else 'FAILS'}" for g in e.get("gates", []))
        took = f"{e['seconds'] / 60:.0f} / {e.get('cpu_seconds', 0) / 60:.0f} min"
        for i, c in enumerate(e["checks"]):
            ci = "no interval" if c.get("ci") is None else f"[{fmt(c['ci'][0])}, {fmt(c['ci'][1])}] ({c['covers']})"
            means = f"{_figure(c.get('variant_mean'))} vs {_figure(c.get('other_mean'))}"
            first = i == 0
            rows.append(f"| {e['key'] if first else ''} | {gates if first else ''} | {c['check']} | {means} | "
                        f"{_figure(c.get('diff'))} {ci} | {e['verdict'] if first else ''} | {took if first else ''} |")
    return rows


def write_index(root: str, entries: list[dict], scale_note: str) -> str:
    """``entries``: {"key", "title", "claim", "verdict", "checks", "report", "seconds"}; writes index.html/.md."""
    md = ["# Reproduction of the seeds' claims", "", scale_note, "", GATE_RULE, ""]
    body = [f"<h1>Reproduction of the seeds' claims</h1><p>{html.escape(scale_note)}</p>"
            f"<p>{html.escape(GATE_RULE)}</p><ul>"]
    for e in entries:
        rel = os.path.relpath(e["report"], root)
        took = f"steps: {e['seconds']:.0f} s wall summed, {e.get('cpu_seconds', 0):.0f} CPU s"
        md += [f"- **{e['verdict']}** — {e['claim']} ([{e['title']}]({rel}/report.md), {took})"]
        lines = [*map(gate_line, e.get("gates", [])), *map(reported_line, e.get("reported", [])),
                 *map(check_line, e["checks"])]
        md += [f"  - {line}" for line in lines]
        body.append(f"<li><b class='{_css(e['verdict'])}'>{html.escape(e['verdict'])}</b> — "
                    f"{html.escape(e['claim'])} (<a href='{html.escape(rel)}/index.html'>{html.escape(e['title'])}"
                    f"</a>, {took})<ul>")
        body += [f"<li><code>{html.escape(line)}</code></li>" for line in lines]
        body.append("</ul>")
        curves = [os.path.relpath(c, root) for c in e.get("curves", [])]
        missing = e.get("missing_curves", [])
        md += [f"  - validation curve: ![{c}]({c})" for c in curves]
        if missing:
            md.append(f"  - validation curve not logged by these runs: {', '.join(missing)}")
        body += [f"<img src='{html.escape(c)}' alt='{html.escape(c)}' width='360'>" for c in curves]
        if missing:
            body.append(f"<p>Validation curve not logged by these runs: {html.escape(', '.join(missing))}</p>")
        body.append("</li>")
    body.append("</ul>")
    md += ["", "## Summary", "", *summary_table(entries)]
    with open(os.path.join(root, "index.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    path = os.path.join(root, "index.html")
    with open(path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>Reproduction</title><style>{STYLE}"
                f"</style></head><body>{''.join(body)}</body></html>\n")
    return path
