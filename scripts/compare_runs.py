"""Compare run directories side by side against a baseline: config diff, final metrics with deltas and
bootstrap 95% intervals, overlaid curves, the same samples side by side, step time and peak memory.

    python scripts/compare_runs.py runs/plain runs/bea_dual --out_dir reports/bea
    python scripts/compare_runs.py mse=runs/mse_s0,runs/mse_s1 dual=runs/dual_s0,runs/dual_s1 --out_dir reports/bea

The first RUN (or NAME=RUN,RUN,... group, one run per seed) is the baseline. Writes OUT_DIR/report.md,
OUT_DIR/index.html (self-contained), OUT_DIR/summary.json and the PNGs; prints the final-metrics table.
"""

import argparse
import os
import sys

from plugins.common.errors import InputError, run_main
from plugins.report import compare, read_groups, terminal_summary, write_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory or NAME=RUN[,RUN...]; first = baseline")
    parser.add_argument("--out_dir", default="reports/compare", help="report directory to write")
    parser.add_argument("--title", default="", help="report title (default: the variant names)")
    parser.add_argument("--note", default="", help="a line shown under the title (e.g. the scale of the runs)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples when not enumerated")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    args = parser.parse_args(argv)
    if args.resamples < 100:
        raise InputError(f"--resamples: got {args.resamples}; expected at least 100")
    groups = read_groups(args.runs)
    out_dir = os.path.realpath(args.out_dir)
    for run in (r for runs in groups.values() for r in runs):
        if out_dir == os.path.realpath(run.path) or out_dir.startswith(os.path.realpath(run.path) + os.sep):
            raise InputError(f"--out_dir {args.out_dir}: inside the run directory {run.path}; a report there would "
                             "be read as that run's results. Choose a folder outside every run")
    result = compare(groups, resamples=args.resamples, seed=args.seed)
    index = write_report(groups, result, args.out_dir, args.title or " vs ".join(groups), args.note)
    print(terminal_summary(result))
    print(f"report: {index}")


if __name__ == "__main__":
    sys.exit(run_main(main))
