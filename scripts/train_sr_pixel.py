"""The SR entry of seed 003: ``train_sr.py`` with the pixel-loss branch on by default.

Defaults ``--pixel_loss_weight 0.05 --pixel_loss_type l2 --pixel_loss_max_t 0.3
--pixel_loss_paired_only True`` (the gate is also ``train_sr.py``'s default; the weight turns the
branch on); every one can be overridden on the command line or in ``--config``.

    accelerate launch scripts/train_sr_pixel.py --vae_path RUN_DIR/vae --output_dir runs/sr_pixel
"""

import sys

from plugins.common.errors import run_main
from plugins.latent_sr.trainer import main

PIXEL_DEFAULTS = dict(pixel_loss_weight=0.05, out_dir="runs/sr_pixel")


def pixel_main(argv=None):
    return main(argv, overrides=PIXEL_DEFAULTS,
                description="Latent rectified-flow SR with the gated pixel-loss branch on (seed 003 defaults).")


if __name__ == "__main__":
    sys.exit(run_main(pixel_main))
