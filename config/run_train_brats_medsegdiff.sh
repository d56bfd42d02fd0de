#!/usr/bin/env bash
# Seed 002 baseline: segmentation diffusion only (no classification head), on the embedded demo cohort by default.
# Overrides (environment): PYTHON, GPUS (>1: mpiexec -n $GPUS), DATA_DIR, CSV_PATH (read for the split only),
# OUT_DIR, MAX_STEPS (20000), IMAGE_SIZE, NUM_CHANNELS, NUM_RES_BLOCKS, DIFFUSION_STEPS, BATCH_SIZE, LR,
# SAVE_INTERVAL (5000), LOG_INTERVAL (100); extra arguments are passed on (e.g. --use_bf16 True).
# Reruns resume from the run's latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source config/medsegdiff_common.sh
MAX_STEPS=${MAX_STEPS:-20000}
run_medsegdiff scripts/segmentation_train.py --out_dir "${OUT_DIR:-runs/brats_medsegdiff}" --use_cls_head False "$@"
