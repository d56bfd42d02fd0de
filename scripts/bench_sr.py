"""Step-time benchmarks of the SR objective, measured side by side (interleaved rounds) in one run.

Figures (one JSON line each; ratio of the fastest step over ``--rounds`` interleaved rounds, whose
order rotates every round, the least disturbed by other load; medians reported too; a step is
objective + backward + AdamW step on one batch of ``--batch_size`` images of ``--size`` px):

- ``pixel_on_vs_off``: pixel branch on (``--pixel_loss_max_t``, decode only gated samples)
  over branch off; target <= 1.35.
- ``off_vs_plain``: branch off (``SRFlowObjective``, weight 0) over a plain rectified-flow
  step built from the same pieces with no branch code at all; target <= 1.01.
- ``subset_vs_decode_all``: decode-the-gated-subset over decode-all-then-mask (reported).

Without ``--vae_path`` a randomly initialised ``AutoencoderKL`` of ``--vae_blocks`` widths is
used (timing does not depend on its weights); the denoiser is ``--backbone`` from ``--backbone_config``.
"""

import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from plugins.backbones.registry import build_backbone, load_backbone_params
from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser
from plugins.latent_sr import codec
from plugins.latent_sr.flow import NUM_TRAIN_TIMESTEPS, interpolate, sample_timesteps, velocity
from plugins.latent_sr.objective import LOSS_DEFAULTS, SRFlowObjective
from plugins.latent_sr.pixel_loss import GatedPixelLoss, per_sample_error

BENCH_DEFAULTS = dict(vae_path="", vae_blocks="32,64,64", latent_channels=4, backbone="unet",
                      backbone_config="config/sr_backbones.yaml", size=64, batch_size=8, rounds=7, warmup=2,
                      pixel_loss_max_t=0.3, threads=0, seed=0)
BENCH_HELP = dict(
    vae_path="frozen AutoencoderKL folder (empty: a fresh random one of --vae_blocks)",
    vae_blocks="comma-separated block channels of the fresh VAE",
    latent_channels="latent channels of the fresh VAE",
    backbone="velocity network from --backbone_config",
    backbone_config="YAML of backbone architectures",
    size="side of the high-resolution input, pixels",
    batch_size="pairs per training step",
    rounds="interleaved timing rounds",
    warmup="untimed warm-up steps",
    pixel_loss_max_t="pixel-loss gate of the timed branch, a fraction of the flow in (0, 1]",
    threads="torch CPU threads (0 = torch's default)",
    seed="seed of the model and the inputs",
)


class DecodeAllPixelLoss(GatedPixelLoss):
    """Reference: decode every sample, then mask the per-sample errors with the gate weights."""

    def __call__(self, decode, z0_hat, hr, t, paired):
        w = self.weights(t, paired)
        n = int((w > 0).sum())
        err = per_sample_error(decode(z0_hat), hr, self.loss_type)
        return (w.float() * err).sum() / max(1, n), n / w.numel()


class PlainObjective(SRFlowObjective):
    """The plain trainer's step: ``mse(v_hat, eps - z0)`` and nothing else."""

    def __call__(self, denoiser, batch):
        z0, cond = self.latents(batch)
        eps = torch.randn_like(z0)
        t = sample_timesteps(z0.shape[0], device=z0.device)
        v_hat = denoiser(torch.cat([interpolate(z0, eps, t), cond], 1), t * NUM_TRAIN_TIMESTEPS).sample
        return F.mse_loss(v_hat.float(), velocity(z0, eps).float()), {}


def make_vae(args):
    if args.vae_path:
        return codec.load_frozen_vae(args.vae_path)
    blocks = tuple(int(b) for b in args.vae_blocks.split(","))
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=blocks,
                        latent_channels=args.latent_channels, norm_num_groups=min(32, blocks[0]))
    return vae.requires_grad_(False).eval()


def main(argv=None):
    args = make_parser(__doc__.splitlines()[0], BENCH_DEFAULTS, phrases=(BENCH_HELP,)).parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1:
        raise InputError("--rounds and --batch_size: expected positive integers")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = make_vae(args).to(device)
    latent = args.size // codec.downsample_factor(vae)
    params = load_backbone_params(args.backbone_config, args.backbone)
    denoiser = build_backbone(args.backbone, vae.config.latent_channels, latent, params).to(device).train()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-5)
    off = {**LOSS_DEFAULTS}
    on = {**LOSS_DEFAULTS, "pixel_loss_weight": 0.05, "pixel_loss_type": "l2",
          "pixel_loss_max_t": args.pixel_loss_max_t, "pixel_loss_paired_only": True}
    objectives = {"plain": PlainObjective(vae, off, 2, "unit"), "off": SRFlowObjective(vae, off, 2, "unit"),
                  "on": SRFlowObjective(vae, on, 2, "unit"), "decode_all": SRFlowObjective(vae, on, 2, "unit")}
    objectives["decode_all"].pixel = DecodeAllPixelLoss("l2", args.pixel_loss_max_t, "hard", True)
    g = torch.Generator().manual_seed(args.seed)
    batch = {"hr": torch.rand(args.batch_size, 1, args.size, args.size, generator=g).to(device),
             "lr": torch.rand(args.batch_size, 1, args.size // 2, args.size // 2, generator=g).to(device),
             "paired": torch.ones(args.batch_size, dtype=torch.bool, device=device)}

    def step(name):
        torch.manual_seed(len(times[name]))  # same t / noise draws for every variant in a round
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = objectives[name](denoiser, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {name: [] for name in objectives}
    for _ in range(args.warmup):
        for name in objectives:
            step(name)
    names = list(objectives)
    for r in tqdm(range(args.rounds), desc="bench_sr"):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(step(name))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    common = dict(device=device, backbone=args.backbone, size=args.size, batch_size=args.batch_size,
                  rounds=args.rounds, pixel_loss_max_t=args.pixel_loss_max_t)
    figures = [("pixel_on_vs_off", "<=1.35", "on", "off"), ("off_vs_plain", "<=1.01", "off", "plain"),
               ("subset_vs_decode_all", "report", "on", "decode_all")]
    for name, target, a, b in figures:
        print(json.dumps({"figure": name, "ratio": round(best[a] / best[b], 4), "target": target,
                          "median_ratio": round(med[a] / med[b], 4), f"{a}_step_s": round(best[a], 5),
                          f"{b}_step_s": round(best[b], 5), **common}))


if __name__ == "__main__":
    sys.exit(run_main(main))
