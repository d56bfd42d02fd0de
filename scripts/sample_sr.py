"""Score a trained SR pipeline on the validation pairs against bicubic upsampling.

    python scripts/sample_sr.py --model_path runs/sr --data_dir data/demo/sr --out_dir runs/sr/eval \
        --num_inference_steps 20

Writes ``OUT_DIR/metrics.json`` (means over the images of per-image PSNR, SSIM, MS-SSIM, NRMSE; the data-set
PSNR as ``psnr_pooled``; bicubic's under ``reference_bicubic``; sampling seconds per image),
``OUT_DIR/cases.csv`` (one row per image, bicubic as ``bicubic_*`` columns) and ``OUT_DIR/sr_grid.png``
(low-res, bicubic, SR, high-res, error map); prints the metrics as one JSON line.
"""

import json
import os
import sys

import torch

from plugins.common.errors import InputError, run_main
from plugins.common.flags import EVAL_DEFAULTS, make_parser
from plugins.common.run_log import write_case_table, write_json_atomic
from plugins.data.sr_pairs import SRPairDataset
from plugins.latent_sr.evaluate import evaluate_pipeline, load_pipeline, save_grid, scored_weights

SAMPLE_DEFAULTS = dict(data_dir="data/demo/sr", split="val", num_inference_steps=20, batch_size=8, seed=0,
                       max_samples=0, grid_rows=8)
SAMPLE_HELP = dict(
    model_path="trained SR run folder (its pipeline/) to score",
    data_dir="SR pair folder",
    out_dir="output folder (metrics.json, cases.csv, sr_grid.png)",
    split="pair split to score: val or train",
    num_inference_steps="Euler sampling steps",
    batch_size="images per sampling batch",
    seed="seed of the sampling noise",
    max_samples="score only the first N images (0 = all)",
    grid_rows="images (rows) in sr_grid.png",
)


def main(argv=None):
    args = make_parser(__doc__.splitlines()[0], EVAL_DEFAULTS, SAMPLE_DEFAULTS, phrases=(SAMPLE_HELP,)).parse_args(argv)
    if args.num_inference_steps < 1 or args.batch_size < 1:
        raise InputError("--num_inference_steps and --batch_size: expected positive integers")
    pipe = load_pipeline(args.model_path)
    dataset = SRPairDataset(args.data_dir, args.split)
    out_dir = args.out_dir or os.path.join(args.model_path, "eval")
    torch.manual_seed(args.seed)
    scores, rows, images = evaluate_pipeline(pipe, dataset, args.num_inference_steps, args.batch_size, args.seed,
                                             args.max_samples)
    scores.update(model_path=args.model_path, split=args.split, num_inference_steps=args.num_inference_steps,
                  scored_weights=scored_weights(args.model_path))
    os.makedirs(out_dir, exist_ok=True)
    save_grid(os.path.join(out_dir, "sr_grid.png"), images["low_res"], images["bicubic"], images["sr"],
              images["high_res"], args.grid_rows)
    write_case_table(os.path.join(out_dir, "cases.csv"), rows)
    write_json_atomic(os.path.join(out_dir, "metrics.json"), scores, indent=2)
    print(json.dumps(scores))


if __name__ == "__main__":
    sys.exit(run_main(main))
