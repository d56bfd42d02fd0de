"""Train the classifier-free guided UNet with BEA and the boundary-aware dual loss on BraTS slices.

    python scripts/train_bea_dual_loss.py --data_dir data/demo/brats --out_dir runs/bea_dual \
        --boundary_loss_weight 0.3 --max_steps 1000
    mpiexec -n 2 python scripts/train_bea_dual_loss.py ...

Baselines through the same script: ``--boundary_loss_weight 0`` (BEA, MSE only) and
``--use_bea False --boundary_loss_weight 0`` (plain classifier-free guided diffusion).
``--help`` lists every flag with its default (seed 000: lr 1e-4, batch 14, 1000 steps, 128 px, 4 channels).
"""

import sys

from patches.guided_diffusion import setup_dist
from plugins.bea.plugin import BEA_DEFAULTS, BEA_HELP, NUM_CLASSES, BeaPlugin
from plugins.common.errors import run_main
from plugins.common.flags import make_parser
from plugins.slice_diffusion.training import TRAINING_HELP, run_training, training_defaults


def main(argv=None):
    defaults = {**training_defaults(), "num_classes": NUM_CLASSES, **BEA_DEFAULTS}
    args = make_parser(__doc__.splitlines()[0], defaults, phrases=(TRAINING_HELP, BEA_HELP)).parse_args(argv)
    plugin = BeaPlugin(args)
    setup_dist()
    run_training(args, plugin)


if __name__ == "__main__":
    sys.exit(run_main(main))
