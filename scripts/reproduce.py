"""Reproduce every seed's claim on the embedded data: run each comparison through the project's scripts,
write its compare_runs report, and an index page with one verdict line per claim.

    python scripts/reproduce.py --scale quick              # minutes on a 2-core CPU: the pipelines run end to end
    python scripts/reproduce.py --scale cpu                # hours on a 2-core CPU: every baseline learns its task
    python scripts/reproduce.py --scale default --seeds 3  # the seeds' sizes, meant for a GPU
    python scripts/reproduce.py --scale cpu --only sr      # a subset of: bea, autoencoder, segmentation, sr, backbones
    python scripts/reproduce.py --scale default --only bea --seeds 1 --extra_flags 'bea_train=--max_steps 1500'

Steps that do not depend on each other run at once (--jobs, one per core on a CPU). Resumable: run the same
command again and finished steps are skipped, interrupted runs continue from their last checkpoint; one
folder serves one reproduce.py at a time. Writes OUT_DIR/index.html (verdicts + links), OUT_DIR/<comparison>/index.html
(the reports), OUT_DIR/verdicts.json; runs and logs under OUT_DIR/runs and OUT_DIR/logs.
"""

import argparse
import os
import sys

from plugins.common.errors import InputError, run_main
from plugins.reproduce import COMPARISONS, DEFAULT_SEEDS, SCALES, Context, check_scale, parse_extra_flags, reproduce
from plugins.reproduce.jobs import Job, run_jobs

DEMO_KINDS = {"brats": "brats/name_mapping.csv", "filaments": "filaments/images", "sr": "sr/meta.json"}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="default",
                        help="quick: tiny models, minutes on a CPU (runs end to end, learns nothing); cpu: the "
                             "smallest sizes where the baselines are competent, hours on 2 cores; default: the "
                             "seeds' sizes (GPU)")
    parser.add_argument("--seeds", type=int, default=0,
                        help="seeds per variant (0: the scale's own number, " +
                             ", ".join(f"{k} {v}" for k, v in DEFAULT_SEEDS.items()) + ")")
    parser.add_argument("--out_dir", default="", help="the reproduction folder (default: reports/reproduce_<scale>)")
    parser.add_argument("--data_dir", default="data/demo", help="the embedded data (built here when missing)")
    parser.add_argument("--only", default=",".join(COMPARISONS), help="comma-separated comparisons to run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per step (0: torch's default; 1 is fastest on a busy 2-core CPU)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="steps run at once, each a process with --threads threads (0: one per CPU core at the "
                             "quick and cpu scales, 1 at the default scale, whose steps each fill a GPU)")
    parser.add_argument("--extra_flags", action="append", default=[], metavar="SETTING=FLAGS",
                        help="flags appended to one of the scale's flag lists, so they override its own (e.g. "
                             "'bea_train=--max_steps 1500' to fit a time budget); repeatable; the folder records them "
                             "and refuses other extra flags; listed on the reports' scale line")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples when not enumerated")
    return parser.parse_args(argv)


def ensure_demo_data(data_dir: str, root: str, threads: int, workers: int) -> None:
    """Build the missing kinds of the embedded data with scripts/make_demo_data.py."""
    jobs = [Job(f"data/{kind}", "make_demo_data", ["--kind", kind, "--out_dir", data_dir])
            for kind, marker in DEMO_KINDS.items() if not os.path.exists(os.path.join(data_dir, marker))]
    if jobs:
        run_jobs(jobs, root, desc="demo data", threads=threads, workers=workers)


def main(argv=None):
    args = parse(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in COMPARISONS]
    if unknown or not keys:
        raise InputError(f"--only: got {args.only!r}; expected a comma-separated subset of {', '.join(COMPARISONS)}")
    if args.seeds < 0 or args.threads < 0 or args.jobs < 0:
        raise InputError("--seeds, --threads and --jobs: expected integers >= 0")
    workers = args.jobs or (1 if args.scale == "default" else len(os.sched_getaffinity(0)))
    seeds = args.seeds or DEFAULT_SEEDS[args.scale]
    root = os.path.abspath(args.out_dir or os.path.join("reports", f"reproduce_{args.scale}"))
    ctx = Context(root=root, data_dir=os.path.abspath(args.data_dir), scale=args.scale, seeds=list(range(seeds)),
                  extra_flags=parse_extra_flags(args.extra_flags, args.scale))
    check_scale(ctx)  # before the demo data are built into this folder's logs (reproduce checks again, locked)
    ensure_demo_data(ctx.data_dir, root, args.threads, workers)
    index = reproduce(ctx, keys, threads=args.threads, workers=workers, resamples=args.resamples)
    print(f"\nreport: {index}")


if __name__ == "__main__":
    sys.exit(run_main(main))
