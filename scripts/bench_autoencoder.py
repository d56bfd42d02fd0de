"""Benchmarks of the autoencoder trainer; one JSON line per figure.

1. ``step_time_ratio``: a full 3D training step (forward, loss, backward, Adam)
   with the ``weighted`` and ``combined`` losses against ``l1``, interleaved
   round by round (order alternating) on one model, optimizer and input (lr
   1e-6, so the weights barely move);
   ``ratio`` is the median of the per-round ratios (robust to slow drifts of a
   shared machine), also given as ratio of medians and of minima (target <= 1.02).
2. ``peak_memory_ratio``: peak memory of a 3D training step with gradient
   checkpointing over without (CUDA: ``max_memory_allocated``; CPU: peak
   resident set above the pre-step baseline, sampled every millisecond, each
   setting in a fresh process with glibc's mmap threshold fixed at 64 KiB so
   freed tensors leave the resident set).

    python scripts/bench_autoencoder.py --size 32 --rounds 20
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

from plugins.autoencoder.config import DEFAULTS
from plugins.autoencoder.losses import ReconstructionLoss
from plugins.autoencoder.models import KLAutoencoder
from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser
from plugins.data.filaments import make_filament_volume

BENCH_DEFAULTS = dict(size=32, channels="8,16,32", rounds=20, warmup=3, mem_size=64, mem_channels="16,32,64",
                      threads=1, memory_child="")
BENCH_HELP = dict(
    size="side of the cubic input of the step-time figure, voxels",
    channels="comma-separated channels per level of the step-time model",
    rounds="interleaved timing rounds",
    warmup="untimed warm-up rounds",
    mem_size="side of the cubic input of the memory figure, voxels",
    mem_channels="comma-separated channels per level of the memory model",
    threads="torch CPU threads",
    memory_child="internal: run one memory measurement in this process (checkpointing or plain)",
)


def model_kw(channels: str) -> dict:
    ch = [int(c) for c in channels.split(",")]
    return dict(spatial_dims=3, in_channels=1, out_channels=1, num_channels=ch, latent_channels=4,
                num_res_blocks=1, attention_levels=[False] * len(ch), norm_num_groups=min(8, ch[0]),
                with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def batch(size: int, device) -> torch.Tensor:
    image, _ = make_filament_volume((size,) * 3, seed=0)
    return torch.from_numpy(image)[None, None].to(device)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(model, opt, loss_fn, x) -> None:
    recon, _, _ = model(x, generator=torch.Generator(device=x.device).manual_seed(0))
    loss = loss_fn(recon, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_ratios(args, device) -> list[dict]:
    torch.manual_seed(0)
    model = KLAutoencoder(model_kw(args.channels)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    x = batch(args.size, device)
    loss_cfg = DEFAULTS["autoencoder"]["training"]["loss"]
    kinds = ("l1", "weighted", "combined")
    runs = {kind: (ReconstructionLoss({**loss_cfg, "reconstruction_loss_type": kind}), []) for kind in kinds}
    for r in range(args.warmup + args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            loss_fn, times = runs[kind]
            sync(device)
            start = time.perf_counter()
            step(model, opt, loss_fn, x)
            sync(device)
            if r >= args.warmup:
                times.append(time.perf_counter() - start)
    l1 = runs["l1"][1]
    out = []
    for kind in ("weighted", "combined"):
        times = runs[kind][1]
        out.append({"figure": "step_time_ratio", "loss": kind, "vs": "l1",
                    "ratio": round(statistics.median(a / b for a, b in zip(times, l1)), 4),
                    "ratio_of_medians": round(statistics.median(times) / statistics.median(l1), 4),
                    "ratio_of_minima": round(min(times) / min(l1), 4),
                    "median_step_s": round(statistics.median(times), 5),
                    "l1_median_step_s": round(statistics.median(l1), 5), "rounds": args.rounds, "size": args.size,
                    "device": device.type, "target": "<= 1.02"})
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def memory_child(args, device, checkpointing: bool) -> int:
    """Peak extra memory (bytes) of one training step."""
    torch.manual_seed(0)
    model = KLAutoencoder(model_kw(args.mem_channels), gradient_checkpointing=checkpointing).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    loss_fn = ReconstructionLoss({**DEFAULTS["autoencoder"]["training"]["loss"], "reconstruction_loss_type": "combined"})
    x = batch(args.mem_size, device)
    step(model, opt, loss_fn, x)  # optimizer state allocated before the baseline
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, opt, loss_fn, x)
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    step(model, opt, loss_fn, x)
    stop.set()
    sampler.join()
    return max(peak[0] - base, 0)


def memory_ratio(args, device) -> dict:
    peaks = {}
    for mode in ("off", "on"):
        argv = [sys.executable, __file__, "--memory_child", mode, "--mem_size", str(args.mem_size),
                "--mem_channels", args.mem_channels, "--threads", str(args.threads)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large tensors mmap'd: freed memory leaves RSS
        out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        peaks[mode] = int(out)
    return {"figure": "peak_memory_ratio", "checkpointing_on_mib": round(peaks["on"] / 2**20, 1),
            "checkpointing_off_mib": round(peaks["off"] / 2**20, 1),
            "ratio_on_over_off": round(peaks["on"] / max(peaks["off"], 1), 4), "size": args.mem_size,
            "channels": args.mem_channels, "device": device.type,
            "measure": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS above baseline"}


def main(argv=None):
    args = make_parser(__doc__.splitlines()[0], BENCH_DEFAULTS, phrases=(BENCH_HELP,)).parse_args(argv)
    if args.size % 4 or args.mem_size % 4:
        raise InputError("--size/--mem_size: expected multiples of 4 (three autoencoder levels)")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.memory_child:
        print(memory_child(args, device, args.memory_child == "on"))
        return
    for record in time_ratios(args, device):
        print(json.dumps(record), flush=True)
    print(json.dumps(memory_ratio(args, device)), flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
