"""Benchmarks of seed 000: dual-loss step vs MSE-only step, and batched FPDM vs two forwards.

    python scripts/bench_bea.py [--image_size 64] [--rounds 10]

1. The same BEA model trains with lambda = 0.3 and with the MSE-only loss, steps interleaved:
   step-time ratio (target <= 1.03) and memory ratio (target <= 1.03): activation bytes saved for
   backward on any device, and peak CUDA memory on a GPU.
2. FPDM: healthy + null class in one 2B forward pass against two B forward passes (ratio), and
   slices per second of the whole forward process for both protocols (anofpdm: DDIM inversion,
   fast: q_sample) at 64 and 128 px, over ``--fpdm_steps`` steps; a full run at stride s takes
   ``600 / s`` steps, so slices per second there = the figure * fpdm_steps / (600 / s).
One JSON line per figure.
"""

import argparse
import warnings

import torch

from patches.guided_diffusion import DIFFUSION_DEFAULTS, MODEL_DEFAULTS, SeamTrainLoop, create_seam_diffusion, create_seam_model, setup_dist
from plugins.bea.fpdm import PROTOCOLS, forward_process
from plugins.bea.plugin import BEA_DEFAULTS, NULL_CLASS, NUM_CLASSES, attach_bea, bea_loss_terms
from plugins.common.bench import interleaved_times, paired_ratios, peak_device_memory, report, saved_tensor_bytes

warnings.filterwarnings("ignore", category=FutureWarning)


WIDTH = {"num_channels": 32, "num_res_blocks": 1}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def model_kwargs(image_size):
    return {**MODEL_DEFAULTS, "image_size": image_size, "in_channels": 4, "attention_resolutions": "16,8",
            "num_heads": 4, "num_classes": NUM_CLASSES, **WIDTH}


def bea_loop(image_size, batch_size, weight):
    torch.manual_seed(0)
    model = create_seam_model(**model_kwargs(image_size))
    attach_bea(model, argparse.Namespace(**BEA_DEFAULTS))
    model.to(DEVICE)
    diffusion = create_seam_diffusion(**DIFFUSION_DEFAULTS)
    for term in bea_loss_terms(weight):
        diffusion.add_loss_term(term)
    loop = SeamTrainLoop(model=model, diffusion=diffusion, data=None, batch_size=batch_size, microbatch=-1,
                         lr=1e-4, ema_rate="0.9999", log_interval=10**9, save_interval=10**9, resume_checkpoint="")
    device = next(model.parameters()).device
    batch = torch.randn(batch_size, 4, image_size, image_size, device=device)
    cond = {"y": torch.randint(0, NUM_CLASSES, (batch_size,), device=device)}
    return lambda: loop.run_step(batch, cond)


def bench_dual_loss(args):
    steps = {"mse_only": bea_loop(args.image_size, args.batch_size, 0.0),
             "dual": bea_loop(args.image_size, args.batch_size, 0.3)}
    ratios, times = paired_ratios(steps, "mse_only", rounds=args.rounds, warmup=1)
    common = {"image_size": args.image_size, "batch_size": args.batch_size, "rounds": args.rounds}
    report("bea_dual_vs_mse_step_time_ratio", ratios["dual"], target="<=1.03",
           mse_only_s=round(times["mse_only"], 5), dual_s=round(times["dual"], 5), **common)
    saved = {k: saved_tensor_bytes(fn) for k, fn in steps.items()}
    report("bea_dual_vs_mse_saved_activation_ratio", saved["dual"] / saved["mse_only"], target="<=1.03",
           mse_only_mb=round(saved["mse_only"] / 2**20, 2), dual_mb=round(saved["dual"] / 2**20, 2), **common)
    peaks = {k: peak_device_memory(fn) for k, fn in steps.items()}
    if peaks["dual"] is not None:
        report("bea_dual_vs_mse_peak_cuda_memory_ratio", peaks["dual"] / peaks["mse_only"], target="<=1.03",
               mse_only_mb=round(peaks["mse_only"], 1), dual_mb=round(peaks["dual"], 1), **common)


def bench_fpdm(args):
    for size in (64, 128):
        torch.manual_seed(0)
        model = create_seam_model(**model_kwargs(size)).eval()
        attach_bea(model, argparse.Namespace(**BEA_DEFAULTS))
        model.to(DEVICE)
        diffusion = create_seam_diffusion(**DIFFUSION_DEFAULTS)
        device = next(model.parameters()).device
        x0 = torch.rand(args.fpdm_batch, 4, size, size, device=device) * 2 - 1
        timesteps = list(range(0, args.fpdm_steps))
        t = torch.full((args.fpdm_batch,), 99, device=device)
        healthy = torch.zeros(args.fpdm_batch, dtype=torch.long, device=device)
        null = torch.full_like(healthy, NULL_CLASS)

        @torch.no_grad()
        def batched():
            model(torch.cat([x0, x0]), torch.cat([t, t]), y=torch.cat([healthy, null]))

        @torch.no_grad()
        def separate():
            model(x0, t, y=healthy)
            model(x0, t, y=null)

        ratios, times = paired_ratios({"batched": batched, "separate": separate}, "separate", rounds=args.rounds)
        report("fpdm_batched_vs_two_forwards_time_ratio", ratios["batched"], image_size=size,
               batch=args.fpdm_batch, batched_s=round(times["batched"], 5), separate_s=round(times["separate"], 5))
        runs = interleaved_times({p: (lambda p=p: forward_process(
            model, diffusion, x0, [2, 3], timesteps, 2.0, p, torch.Generator().manual_seed(0)))
            for p in PROTOCOLS}, rounds=2, warmup=1)
        for protocol, seconds in runs.items():
            report("fpdm_slices_per_second", args.fpdm_batch / seconds, protocol=protocol, image_size=size,
                   steps=len(timesteps), batch=args.fpdm_batch,
                   full_run_slices_per_second_stride1=args.fpdm_batch / seconds * len(timesteps) / 600)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64, help="slice side, pixels")
    parser.add_argument("--batch_size", type=int, default=4, help="training batch of the step figures")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--fpdm_batch", type=int, default=8, help="slices per FPDM forward batch")
    parser.add_argument("--fpdm_steps", type=int, default=10, help="forward steps timed per slice (a full run: t_max / t_stride)")
    parser.add_argument("--num_channels", type=int, default=32, help="UNet base channels")
    parser.add_argument("--num_res_blocks", type=int, default=1, help="residual blocks per level")
    args = parser.parse_args()
    WIDTH.update(num_channels=args.num_channels, num_res_blocks=args.num_res_blocks)
    setup_dist()
    try:
        bench_dual_loss(args)
        bench_fpdm(args)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
