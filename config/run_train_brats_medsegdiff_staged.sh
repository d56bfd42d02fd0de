#!/usr/bin/env bash
# Seed 002 staged training, the seed's plan (section 6, table 7.3):
#   stage 1  segmentation only, no classification head   --lr        20000 steps, save 5000, log 100
#   stage 2  the head only (backbone frozen)              --lr x 10    5000 steps, save 2000, log 50
#   stage 3  everything, uncertainty weighting            --lr x 0.1   2000 steps, save 1000, log 50
#            (the log-sigmas at --uw_lr, default the stage-1 rate)
# each stage starting from the previous one's last checkpoint. Overrides (environment): as
# config/run_train_brats_medsegdiff_cls.sh, with OUT_DIR the parent of stage1/ stage2/ stage3/, and
# STAGE{1,2,3}_STEPS, STAGE{1,2,3}_SAVE, STAGE{1,2,3}_LOG (default: the plan above).
set -euo pipefail
cd "$(dirname "$0")/.."
source config/medsegdiff_common.sh
ROOT=${OUT_DIR:-runs/brats_medsegdiff_staged}
unset OUT_DIR MAX_STEPS SAVE_INTERVAL LOG_INTERVAL
stage() {  # stage N ARGS...: one stage with its plan (or the STAGEN_* overrides)
  local n=$1
  shift
  local steps=STAGE${n}_STEPS save=STAGE${n}_SAVE log=STAGE${n}_LOG
  MAX_STEPS=${!steps:-} SAVE_INTERVAL=${!save:-} LOG_INTERVAL=${!log:-} \
    run_medsegdiff scripts/segmentation_train_staged.py --stage "$n" --out_dir "$ROOT/stage$n" "$@"
}
stage 1 --use_cls_head False "$@"
stage 2 --use_cls_head True --resume_checkpoint "$ROOT/stage1" "${CLS_ARGS[@]}" "$@"
stage 3 --use_cls_head True --resume_checkpoint "$ROOT/stage2" "${CLS_ARGS[@]}" "$@"
