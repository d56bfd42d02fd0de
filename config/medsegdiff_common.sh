# Shared by the seed-002 run_*_medsegdiff*.sh scripts (sourced): seed defaults, environment overrides,
# the embedded demo cohort (built when missing), and the launcher (mpiexec -n $GPUS when GPUS > 1).
# MAX_STEPS, SAVE_INTERVAL, LOG_INTERVAL are passed only when set (the staged script has a plan per stage).
PYTHON=${PYTHON:-python}
GPUS=${GPUS:-1}
DATA_DIR=${DATA_DIR:-data/demo/brats}
CSV_PATH=${CSV_PATH:-$DATA_DIR/name_mapping.csv}
if [ "$DATA_DIR" = data/demo/brats ] && [ ! -f "$DATA_DIR/name_mapping.csv" ]; then
  "$PYTHON" scripts/make_demo_data.py --kind brats --out_dir data/demo
fi
# every variant reads the grades, so every variant splits the cohort the same way (stratified by grade)
GRADE_ARGS=(--csv_path "$CSV_PATH")
CLS_ARGS=(--focal_gamma "${FOCAL_GAMMA:-2.0}" --seg_focal_gamma "${SEG_FOCAL_GAMMA:-1.5}"
          --seg_focal_lambda "${SEG_FOCAL_LAMBDA:-0.5}")

run_medsegdiff() {  # run_medsegdiff SCRIPT ARGS...: the seed's flags, then ARGS (later flags win)
  local script=$1
  shift
  local launch=("$PYTHON")
  [ "$GPUS" -gt 1 ] && launch=(mpiexec -n "$GPUS" "$PYTHON")
  local optional=()
  [ -n "${MAX_STEPS:-}" ] && optional+=(--max_steps "$MAX_STEPS")
  [ -n "${SAVE_INTERVAL:-}" ] && optional+=(--save_interval "$SAVE_INTERVAL")
  [ -n "${LOG_INTERVAL:-}" ] && optional+=(--log_interval "$LOG_INTERVAL")
  "${launch[@]}" "$script" --data_name BRATS --data_dir "$DATA_DIR" "${GRADE_ARGS[@]}" \
    --image_size "${IMAGE_SIZE:-256}" --num_channels "${NUM_CHANNELS:-128}" --num_res_blocks "${NUM_RES_BLOCKS:-2}" \
    --diffusion_steps "${DIFFUSION_STEPS:-1000}" --noise_schedule linear --lr "${LR:-1e-4}" \
    --batch_size "${BATCH_SIZE:-4}" --use_fp16 False --resume_checkpoint latest "${optional[@]}" "$@"
}
