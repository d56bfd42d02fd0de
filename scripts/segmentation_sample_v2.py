"""Evaluate a segmentation-diffusion checkpoint: ensemble sampling, mean/STAPLE fusion, Dice/IoU, grades.

    python scripts/segmentation_sample_v2.py --model_path runs/segdiff_cls/model001000.pt \
        --num_ensemble 5 --timestep_respacing ddim50 --num_eval_cases 20

The network is rebuilt from the ``config.json`` saved beside the checkpoint; model flags given here
are accepted and must agree with it. Subjects: the first ``--num_eval_cases`` validation subjects of
the run's ``split.json`` (0 = all). ``--timestep_respacing ddimN`` samples with DDIM in N steps, a
plain number N with ancestral sampling over N respaced steps, "" with every step. Writes to
``--out_dir`` (default ``<run>/eval_<checkpoint>``): ``metrics.json`` (volume and slice Dice/IoU of
the samples fused by mean and STAPLE and of the calibration head, classification per subject and
per slice, the FLAIR-thresholding reference, slices per second), ``cases.csv`` (one row per
subject) and ``grid.png`` (image, ground truth, samples, fused masks, calibration map).
See plugins/segdiff/evaluation.py for the method.
"""

import json
import sys

from plugins.common.errors import run_main
from plugins.common.flags import make_parser
from plugins.segdiff.evaluation import SAMPLE_DEFAULTS, SAMPLE_HELP, evaluate


def parse(argv):
    """(args, the names of the flags given explicitly)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser(__doc__.splitlines()[0], SAMPLE_DEFAULTS, phrases=(SAMPLE_HELP,)).parse_args(argv)
    given = {k for k in SAMPLE_DEFAULTS if any(a == f"--{k}" or a.startswith(f"--{k}=") for a in argv)}
    return args, given


def main(argv=None):
    args, given = parse(argv)
    print(json.dumps(evaluate(args, given)))


if __name__ == "__main__":
    sys.exit(run_main(main))
