"""Train MedSegDiff-style segmentation diffusion on BraTS slices, jointly with the HGG/LGG head or alone.

    python scripts/segmentation_train.py --data_dir data/demo/brats --csv_path data/demo/brats/name_mapping.csv \
        --out_dir runs/segdiff_cls --use_cls_head True --max_steps 1000
    python scripts/segmentation_train.py --data_dir data/demo/brats --out_dir runs/segdiff --use_cls_head False
    mpiexec -n 2 python scripts/segmentation_train.py ...   # two ranks

Joint (``--use_cls_head True``): L_total = uncertainty-weighted L_seg and L_cls (two learnable
log-sigmas, at --uw_lr). Segmentation only: L_seg = diffusion MSE + Dice + lambda * focal of the
calibration map. Both heads read the image pass (the UNet on the image, mask channel zeroed).
Every --val_interval epochs and the end of the run validate on the whole validation split, the sampled masks
(DDIM, --val_num_ensemble) scored beside the calibration head (metrics_epoch.jsonl, TensorBoard,
stdout; the end of the run also validation/metrics.json and cases.csv).
Flags mirror MedSegDiff's (``--key value``); ``--help`` lists them all.
"""

import sys

from patches.guided_diffusion import setup_dist
from plugins.common.errors import run_main
from plugins.common.flags import make_parser
from plugins.segdiff.plugin import SEGDIFF_HELP, SegDiffPlugin, resumed_checkpoint, segdiff_training_defaults
from plugins.segdiff.stages import check_resume_stage
from plugins.slice_diffusion.training import TRAINING_HELP, run_training


def main(argv=None):
    args = make_parser(__doc__.splitlines()[0], segdiff_training_defaults(),
                       phrases=(TRAINING_HELP, SEGDIFF_HELP)).parse_args(argv)
    resumed = resumed_checkpoint(args)
    if resumed:
        check_resume_stage(resumed, 0)
    plugin = SegDiffPlugin(args)
    setup_dist()
    plugin.finish(run_training(args, plugin))


if __name__ == "__main__":
    sys.exit(run_main(main))
