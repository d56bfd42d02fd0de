#!/usr/bin/env bash
# Seed 002 joint training: segmentation diffusion + HGG/LGG head, uncertainty weighting (two log-sigmas).
# Overrides (environment): as config/run_train_brats_medsegdiff.sh, plus FOCAL_GAMMA, SEG_FOCAL_GAMMA,
# SEG_FOCAL_LAMBDA, GRAD_SURGERY (none|pcgrad); extra arguments are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
source config/medsegdiff_common.sh
MAX_STEPS=${MAX_STEPS:-20000}
run_medsegdiff scripts/segmentation_train.py --out_dir "${OUT_DIR:-runs/brats_medsegdiff_cls}" --use_cls_head True \
  "${CLS_ARGS[@]}" --grad_surgery "${GRAD_SURGERY:-none}" "$@"
