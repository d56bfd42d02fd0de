"""Benchmark segmentation diffusion: joint vs segmentation-only step time, probe and PCGrad cost, sampling speed.

Step times: ``SeamTrainLoop.run_step`` (forward, loss, backward, clip, AdamW, EMA) of the loops on the
same backbone and batch, interleaved: plain diffusion (upstream's MSE, no heads), segmentation only
(calibration head on the image pass, L_seg), joint (classification head on the image pass +
uncertainty weighting, no probe; target <= 1.05 of segmentation only), joint with the gradient-conflict
probe on every step (so the difference is the cost of one probe), and joint with PCGrad. The image pass
(the UNet run a second time, on the image with the mask channel zeroed) is what keeps the heads from
reading x_t; segmentation only vs plain diffusion is its cost. Sampling: slices per second of
``--num_ensemble`` samples per slice, ancestral over ``--diffusion_steps`` steps against DDIM over
``--ddim_steps`` (the validation's sampler). Also the calibration head's parameters against a full
second UNet at the seed's configuration (256 px, 128 channels, 2 res blocks, 4 modalities).
One JSON line per figure.

    python scripts/bench_segdiff.py [--image_size 64] [--num_channels 64] [--rounds 10]
"""

import argparse
import time
import warnings

import numpy as np
import torch
from guided_diffusion import dist_util, logger

from patches.guided_diffusion import DIFFUSION_DEFAULTS, MODEL_DEFAULTS, create_seam_diffusion, create_seam_model
from plugins.common.bench import paired_ratios, report
from plugins.segdiff.gradients import TaskGradients
from plugins.segdiff.heads import attach_segdiff, highway_parameter_counts
from plugins.segdiff.loop import SegDiffTrainLoop
from plugins.segdiff.objective import SegDiffObjective
from plugins.segdiff.sampling import sample_ensemble

warnings.filterwarnings("ignore", category=FutureWarning)
MODALITIES = 4


def model_kwargs(args) -> dict:
    return {**MODEL_DEFAULTS, "image_size": args.image_size, "num_channels": args.num_channels,
            "num_res_blocks": args.num_res_blocks, "attention_resolutions": "8", "num_heads": 1}


def build(args, use_cls: bool, probe: bool = False, surgery: str = "none", plain: bool = False):
    """(loop, batch, cond) on a fresh seeded model; every variant shares the backbone's initial weights."""
    torch.manual_seed(0)
    np.random.seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_seam_model(**{**model_kwargs(args), "in_channels": MODALITIES + 1, "out_channels": 1})
    diffusion = create_seam_diffusion(**{**DIFFUSION_DEFAULTS, "diffusion_steps": args.diffusion_steps})
    backward_fn = None
    if not plain:
        attach_segdiff(model, use_cls_head=use_cls)
        objective = SegDiffObjective("uw" if use_cls else "seg", alpha=[2.0, 0.6])
        objective.install(diffusion)
        backward_fn = TaskGradients(objective, model, surgery, probe)
    model.to(device)
    loop = SegDiffTrainLoop(model=model, diffusion=diffusion, data=None, batch_size=args.batch_size, microbatch=-1,
                            lr=1e-4, ema_rate="0.9999", log_interval=10**9, save_interval=10**9,
                            resume_checkpoint="", grad_clip=1.0, backward_fn=backward_fn)
    g = torch.Generator().manual_seed(1)
    s = args.image_size
    mask = ((torch.rand(args.batch_size, 1, s, s, generator=g) > 0.8).float() * 2 - 1).to(device)
    cond = {"concat": torch.randn(args.batch_size, MODALITIES, s, s, generator=g).to(device)}
    if use_cls:
        cond["labels"] = (torch.arange(args.batch_size) % 2).to(device)
    return loop, mask, cond


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sampling_rate(model, diffusion, image, num_ensemble, use_ddim) -> float:
    sync()
    start = time.perf_counter()
    sample_ensemble(model, diffusion, image, num_ensemble, use_ddim, torch.Generator().manual_seed(0))
    sync()
    return image.shape[0] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64, help="slice size in pixels")
    parser.add_argument("--num_channels", type=int, default=64, help="UNet base channels")
    parser.add_argument("--num_res_blocks", type=int, default=1, help="residual blocks per level")
    parser.add_argument("--batch_size", type=int, default=4, help="training batch")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--diffusion_steps", type=int, default=200, help="diffusion steps (ancestral sampling)")
    parser.add_argument("--ddim_steps", type=int, default=20, help="DDIM sampling steps")
    parser.add_argument("--num_ensemble", type=int, default=5, help="samples per slice")
    parser.add_argument("--sample_slices", type=int, default=2, help="slices sampled for the speed figures")
    args = parser.parse_args()
    dist_util.setup_dist()
    logger.configure(format_strs=[])
    size = {"image_size": args.image_size, "num_channels": args.num_channels, "batch_size": args.batch_size,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
    try:
        variants = {"plain": build(args, False, plain=True), "seg_only": build(args, False),
                    "joint": build(args, True), "joint_probe": build(args, True, probe=True),
                    "joint_pcgrad": build(args, True, surgery="pcgrad")}

        def step(loop, batch, cond):
            loop.run_step(batch, cond)
            sync()

        ratios, times = paired_ratios({k: (lambda l=l, b=b, c=c: step(l, b, c)) for k, (l, b, c) in variants.items()},
                                      "seg_only", rounds=args.rounds, warmup=2)
        report("joint_vs_seg_only_step_time_ratio", ratios["joint"], target="<=1.05",
               seg_only_s=round(times["seg_only"], 4), joint_s=round(times["joint"], 4), **size)
        report("seg_only_vs_plain_diffusion_step_time_ratio", 1 / ratios["plain"],
               plain_s=round(times["plain"], 4), note="the image pass: a second UNet forward/backward", **size)
        report("grad_probe_seconds_per_probe", times["joint_probe"] - times["joint"],
               relative_to_joint_step=round(times["joint_probe"] / times["joint"], 3), **size)
        report("pcgrad_vs_joint_step_time_ratio", ratios["joint_pcgrad"] / ratios["joint"], **size)
        model = variants["joint"][0].model.eval()
        image = variants["joint"][2]["concat"][: args.sample_slices]
        full = create_seam_diffusion(**{**DIFFUSION_DEFAULTS, "diffusion_steps": args.diffusion_steps})
        ddim = create_seam_diffusion(**{**DIFFUSION_DEFAULTS, "diffusion_steps": args.diffusion_steps,
                                        "timestep_respacing": f"ddim{args.ddim_steps}"})
        rate_full = sampling_rate(model, full, image, args.num_ensemble, use_ddim=False)
        rate_ddim = sampling_rate(model, ddim, image, args.num_ensemble, use_ddim=True)
        report("sampling_slices_per_second_ancestral", rate_full, steps=args.diffusion_steps,
               num_ensemble=args.num_ensemble, **size)
        report("sampling_slices_per_second_ddim", rate_ddim, steps=args.ddim_steps, num_ensemble=args.num_ensemble,
               speedup=round(rate_ddim / rate_full, 2), **size)
        counts = highway_parameter_counts({**MODEL_DEFAULTS, "image_size": 256, "num_channels": 128,
                                           "num_res_blocks": 2}, MODALITIES)
        report("calib_head_params_fraction_of_second_unet", counts["fraction"], **counts)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
