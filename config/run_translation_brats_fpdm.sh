#!/usr/bin/env bash
# Seed 000, FPDM anomaly maps of the baseline: plain classifier-free guided diffusion (no BEA, MSE only) run, AnoFPDM's protocol (w 2, DDIM-inversion
# forward to 60% of the diffusion steps): tuned on half the validation subjects (slice labels only), scored on the rest.
# Overrides: see config/guided_common.sh; MODEL_PATH (default the training run), NUM_EVAL_CASES, PROTOCOL (anofpdm|fast),
# T_MAX (0 = 60% of the steps), T_STRIDE (0 = the protocol's default), W; extra arguments are passed on.
# Output: MODEL_PATH/fpdm (anofpdm), MODEL_PATH/fpdm_fast (PROTOCOL=fast), so neither protocol overwrites the other.
source "$(dirname "$0")/guided_common.sh"
MODEL_PATH=${MODEL_PATH:-${OUT_DIR:-runs/brats_clf_free_guided}}
PROTOCOL=${PROTOCOL:-anofpdm}
FPDM_DIR=$MODEL_PATH/fpdm
[ "$PROTOCOL" = anofpdm ] || FPDM_DIR=${FPDM_DIR}_$PROTOCOL
exec "$PYTHON" scripts/translation_FPDM_bea_dual_loss.py --model_path "$MODEL_PATH" --data_dir "$DATA_DIR" \
  --out_dir "$FPDM_DIR" --protocol "$PROTOCOL" --t_max "${T_MAX:-0}" --t_stride "${T_STRIDE:-0}" --w "${W:-2}" \
  --fpdm_modalities flair,t2 --num_eval_cases "${NUM_EVAL_CASES:-0}" "$@"
