"""Benchmark: SeamTrainLoop with no plugins against upstream TrainLoop (target ratios <= 1.02).

Step time: both loops train the same model on the same batches, steps
interleaved in one process. Peak memory: each variant trains in its own fresh
process (peak RSS on the CPU, ``max_memory_allocated`` on CUDA), alternated.
Prints one JSON line per figure.

    python scripts/bench_seams.py [--image_size 64] [--rounds 20]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import warnings

import numpy as np
import torch
from guided_diffusion import dist_util, logger
from guided_diffusion.train_util import TrainLoop

from patches.guided_diffusion import DIFFUSION_DEFAULTS, MODEL_DEFAULTS, SeamTrainLoop, create_seam_diffusion, create_seam_model
from plugins.common.bench import paired_ratios, report

warnings.filterwarnings("ignore", category=FutureWarning)


def build(kind, image_size, batch_size):
    """A loop of ``kind`` ('upstream' or 'seam') on a fresh seeded model; returns (loop, batch)."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = create_seam_model(**{**MODEL_DEFAULTS, "image_size": image_size, "num_channels": 32,
                                 "num_res_blocks": 1, "attention_resolutions": "8", "num_heads": 1})
    diffusion = create_seam_diffusion(**{**DIFFUSION_DEFAULTS, "diffusion_steps": 100})
    cls = SeamTrainLoop if kind == "seam" else TrainLoop
    loop = cls(model=model, diffusion=diffusion, data=None, batch_size=batch_size, microbatch=-1, lr=1e-4,
               ema_rate="0.9999", log_interval=10**9, save_interval=10**9, resume_checkpoint="")
    batch = torch.randn(batch_size, MODEL_DEFAULTS["in_channels"], image_size, image_size)
    return loop, batch


def peak_memory(kind, image_size, batch_size, steps):
    loop, batch = build(kind, image_size, batch_size)
    for _ in range(steps):
        loop.run_step(batch, {})
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64, help="slice side, pixels")
    parser.add_argument("--batch_size", type=int, default=4, help="training batch")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--memory_repeats", type=int, default=2, help="fresh-process memory runs per variant")
    parser.add_argument("--memory_of", choices=["upstream", "seam"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = {"image_size": args.image_size, "batch_size": args.batch_size}
    if not args.memory_of:  # fresh processes first, before this one joins a process group
        peaks = {"upstream": [], "seam": []}
        for _ in range(args.memory_repeats):
            for kind in peaks:
                out = subprocess.run([sys.executable, __file__, "--memory_of", kind, "--image_size", str(args.image_size),
                                      "--batch_size", str(args.batch_size)], capture_output=True, text=True, check=True)
                peaks[kind].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
        up, seam = statistics.median(peaks["upstream"]), statistics.median(peaks["seam"])
        report("seam_vs_upstream_peak_memory_ratio", seam / up, target="<=1.02", upstream_mb=round(up, 1),
               seam_mb=round(seam, 1), **common)
    dist_util.setup_dist()
    logger.configure(format_strs=[])
    try:
        if args.memory_of:
            print(json.dumps({"peak_mb": peak_memory(args.memory_of, args.image_size, args.batch_size, 3)}))
            return
        loops = {kind: build(kind, args.image_size, args.batch_size) for kind in ("upstream", "seam")}
        ratios, times = paired_ratios({k: (lambda l=l, b=b: l.run_step(b, {})) for k, (l, b) in loops.items()},
                                      "upstream", rounds=args.rounds, warmup=2)
        report("seam_vs_upstream_step_time_ratio", ratios["seam"], target="<=1.02",
               upstream_s=round(times["upstream"], 5), seam_s=round(times["seam"], 5), rounds=args.rounds, **common)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

if __name__ == "__main__":
    main()
