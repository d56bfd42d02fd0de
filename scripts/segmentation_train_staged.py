"""Staged segmentation + HGG/LGG training: stage 1 segmentation, 2 head only, 3 joint fine-tuning.

    python scripts/segmentation_train_staged.py --stage 1 --data_dir D --out_dir runs/staged/stage1 \
        --use_cls_head False
    python scripts/segmentation_train_staged.py --stage 2 --data_dir D --csv_path D/name_mapping.csv \
        --out_dir runs/staged/stage2 --resume_checkpoint runs/staged/stage1
    python scripts/segmentation_train_staged.py --stage 3 --data_dir D --csv_path D/name_mapping.csv \
        --out_dir runs/staged/stage3 --resume_checkpoint runs/staged/stage2

Stage 1 trains everything but the classification head and the log-sigmas (L_seg, --lr; with
--use_cls_head False there is no head yet); stage 2 only the head (L_cls, --lr x 10); stage 3
everything with uncertainty weighting (--lr x 0.1, the log-sigmas at --uw_lr, default the
stage-1 rate --lr). The seed's plan sets --max_steps, --save_interval, --log_interval per stage
(stage 1 20000/5000/100, stage 2 5000/2000/50, stage 3 2000/1000/50); flags given win.
Stages 2 and 3 need --resume_checkpoint: the previous stage's modelNNNNNN.pt or run directory,
whose weights start a new run in --out_dir (a missing head starts fresh); when --out_dir already
holds a checkpoint, that run resumes instead. Every run directory records its stage (stage.json):
a checkpoint of another stage is refused, naming both. config.json records the stage's effective
--lr and --uw_lr.
"""

import os
import sys

from patches.guided_diffusion import latest_checkpoint, setup_dist
from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser
from plugins.common.run_log import CONFIG_FILE, check_config, read_config
from plugins.data import settings_from_args
from plugins.segdiff.plugin import (SEGDIFF_ARCHITECTURE_KEYS, SEGDIFF_HELP, SegDiffPlugin, resumed_checkpoint,
                                    segdiff_model_for_config, segdiff_training_defaults)
from plugins.segdiff.stages import (STAGE_PLAN, STAGES, check_init_stage, check_resume_stage, describe,
                                    load_stage_weights)
from plugins.slice_diffusion.training import ARCHITECTURE_KEYS, TRAINING_HELP, run_training


def staged_defaults() -> dict:
    return {"stage": 1, **segdiff_training_defaults(), **STAGE_PLAN[1]}


def given_flags(argv, keys) -> set:
    """The names of ``keys`` given explicitly on the command line."""
    return {k for k in keys if any(a == f"--{k}" or a.startswith(f"--{k}=") for a in argv)}


def previous_stage_checkpoint(args, stage) -> str:
    """The checkpoint the stage starts from, checked (stage, architecture, weights) before anything is written."""
    source = resumed_checkpoint(args)
    found = check_init_stage(source, stage.number)
    if found != stage.number - 1:
        print(f"warning: --resume_checkpoint {source}: stage {stage.number} starts from {describe(found)}",
              file=sys.stderr)
    keys = ARCHITECTURE_KEYS + tuple(k for k in SEGDIFF_ARCHITECTURE_KEYS if k != "use_cls_head")
    check_config(os.path.dirname(os.path.abspath(source)), vars(args), keys)
    load_stage_weights(segdiff_model_for_config(vars(args), len(settings_from_args(args).modalities)), source)
    return source


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = make_parser(__doc__.splitlines()[0], staged_defaults(), phrases=(TRAINING_HELP, SEGDIFF_HELP))
    args = parser.parse_args(argv)
    if args.stage not in STAGES:
        raise InputError(f"--stage {args.stage}: expected 1, 2 or 3")
    stage = STAGES[args.stage]
    for key in STAGE_PLAN[stage.number].keys() - given_flags(argv, STAGE_PLAN[stage.number]):
        setattr(args, key, STAGE_PLAN[stage.number][key])
    if stage.number > 1 and not args.resume_checkpoint:
        raise InputError(f"--stage {stage.number} needs --resume_checkpoint: the stage-{stage.number - 1} "
                         "modelNNNNNN.pt or its run directory")
    init = ""  # the previous stage's checkpoint this run started from (kept in config.json)
    own = latest_checkpoint(args.out_dir) if stage.number > 1 and os.path.isdir(args.out_dir) else None
    if own:
        args.resume_checkpoint = own
        if os.path.isfile(os.path.join(args.out_dir, CONFIG_FILE)):
            init = read_config(args.out_dir).get("init_checkpoint", "")
    resumed = own or (resumed_checkpoint(args) if stage.number == 1 else "")
    if resumed:
        check_resume_stage(resumed, stage.number)
    args.uw_lr = args.uw_lr or args.lr  # the stage-1 rate
    plugin = SegDiffPlugin(args, stage)
    if stage.number > 1 and not own:
        init = previous_stage_checkpoint(args, stage)
        args.resume_checkpoint = "latest"  # nothing of this stage yet: a fresh start, rerunnable until it saves
    args.init_checkpoint = init
    plugin.init_checkpoint = "" if own else init  # a resumed run loads its own checkpoint
    args.lr = args.lr * stage.lr_factor
    setup_dist()
    plugin.finish(run_training(args, plugin))


if __name__ == "__main__":
    sys.exit(run_main(main))
