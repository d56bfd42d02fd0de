#!/usr/bin/env bash
# Seed 003 baseline: latent rectified-flow SR, pixel branch off, on the embedded SR pairs.
# Needs a 2D AutoencoderKL from scripts/train_autoencoder.py (--autoencoder.spatial_dims 2): VAE_PATH=RUN_DIR/vae.
# Overrides (environment): LAUNCH (default "python scripts/launch.py": accelerate launch with the worker's exit
# status, 2 on bad input, and no launcher traceback), VAE_PATH, DATA_DIR, OUT_DIR, MAX_STEPS, BACKBONE;
# extra arguments are passed on (e.g. --mixed_precision bf16 --pixel_loss_schedule ramp).
set -euo pipefail
cd "$(dirname "$0")/.."
LAUNCH=${LAUNCH:-${PYTHON:-python} scripts/launch.py}
DATA_DIR=${DATA_DIR:-data/demo/sr}
OUT_DIR=${OUT_DIR:-runs/sr}
SCRIPT=${SCRIPT:-scripts/train_sr.py}
if [ ! -f "$DATA_DIR/meta.json" ] && [ "$DATA_DIR" = data/demo/sr ]; then
  ${PYTHON:-python} scripts/make_demo_data.py --kind sr --out_dir data/demo
fi
ARGS=(--data_dir "$DATA_DIR" --output_dir "$OUT_DIR" --vae_path "${VAE_PATH:-}" --backbone "${BACKBONE:-unet}")
[ -n "${MAX_STEPS:-}" ] && ARGS+=(--max_train_steps "$MAX_STEPS")
exec $LAUNCH "$SCRIPT" "${ARGS[@]}" "$@"
