"""Train the plain guided-diffusion UNet on BraTS axial slices (the baseline every 2D plugin extends).

    python scripts/image_train.py --data_dir data/demo/brats --out_dir runs/plain --max_steps 1000
    mpiexec -n 2 python scripts/image_train.py ...        # two ranks (gloo on the CPU, NCCL on GPUs)

Flags mirror guided-diffusion's image_train.py (``--key value``); ``--help`` lists them all.
"""

import sys

from patches.guided_diffusion import setup_dist
from plugins.common.errors import run_main
from plugins.common.flags import make_parser
from plugins.slice_diffusion.training import TRAINING_HELP, run_training, training_defaults


def main(argv=None):
    args = make_parser(__doc__.splitlines()[0], training_defaults(), phrases=(TRAINING_HELP,)).parse_args(argv)
    setup_dist()
    run_training(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
