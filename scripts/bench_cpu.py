"""CPU training-step throughput of the three model families: threads, channels_last, torch.compile, side by side.

Families, at the sizes of the reproduction's cpu scale (``--families``):

- ``gd``: guided-diffusion UNet of BEA/segmentation (``SeamUNetModel``, no plugin): 32 px, 4 channels, 32 base
  channels, 1 res block, attention at 8 px, 3 classes; ``training_losses`` (MSE, 100 steps) on [B, 4, 32, 32].
- ``sr_unet``: diffusers ``UNet2DModel`` ``TINY_BACKBONES["unet"]``; rectified-flow velocity MSE on
  4-channel 32x32 latents + 4 condition channels, [B, 8, 32, 32] -> [B, 4, 32, 32].
- ``ae3d``: MONAI 3D ``AutoencoderKL`` (channels 16, 32, latent 4, 1 res block, no attention); the
  autoencoder trainer's default reconstruction loss (combined) + 1e-6 KL on [B, 1, 16, 16, 16] filament crops.

A step is forward, loss, backward and an AdamW step on one fixed batch. Variants: eager at every thread count
of ``--threads`` (``torch.set_num_threads``) x memory format (default; channels_last weights with contiguous
inputs, as the guided-diffusion trainers' ``--channels_last`` does, 2D only), and compiled
(``torch.compile(model)``, default inductor backend, the optimizer eager) at each thread count of
``--compile_threads``, in the default format (channels_last too with ``--compile_channels_last``).
Every variant holds its own copy of the same initial weights and optimizer; the noise and timesteps of a step
come from a seed shared by all variants, so they all compute the same function.

Side by side (``--side_by_side N``, 2D families): the reproduction trains N steps at once, one thread each,
so the memory format is also timed that way. Each round starts N fresh processes of one format at once (the
formats alternate, the order reversed every other round); after a warm-up step they start together, each
times ``--side_by_side_steps`` steps and trains on until all have timed theirs. A round's figure is the mean
seconds per step of its processes. One JSON line per format (``figure: train_step_side_by_side``), ``value``
= speedup over the default format (median of the per-round time ratios).

One JSON line per variant (``figure: train_step``): ``value`` = speedup over the baseline (eager, default
format, the first thread count) = median over ``--rounds`` interleaved rounds of the per-round time ratio
(the order reversed every other round; ``plugins/common/bench.py``), with median seconds per step and
steps/s. "Same results": the loss after ``--check_steps`` optimizer steps from the same weights, seed and
batch, relative to the baseline's, must stay within ``--tolerance`` (``agree``); compiled graphs draw their
in-model noise as eager torch does unless ``--compile_fallback_random False`` (inductor's own generator gives
the 3D autoencoder's posterior sample other noise, hence another loss). A compilation that fails or
outlasts ``--compile_timeout`` is reported ``status: unsupported`` with the error's first line.

    python scripts/bench_cpu.py                                   # all families, 1 vs 2 threads, compile on
    python scripts/bench_cpu.py --compile False --rounds 15       # eager only, tighter medians
    python scripts/bench_cpu.py --families gd --rounds 9 --steps 3
    python scripts/bench_cpu.py --families gd --threads 1 --compile False --side_by_side 2   # as the cpu scale trains
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from plugins.common.bench import paired_ratios
from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser

FAMILIES = ("gd", "sr_unet", "ae3d")
BENCH_DEFAULTS = dict(families="gd,sr_unet,ae3d", threads="1,2", channels_last=True, compile=True, compile_threads="1",
                      compile_channels_last=False, compile_timeout=300.0, compile_fallback_random=True, rounds=5,
                      steps=1, warmup=1, check_steps=3, tolerance=1e-4,
                      side_by_side=2, side_by_side_steps=20, gd_batch=8, sr_batch=16, ae_batch=1, lr=1e-4, seed=0)
BENCH_HELP = dict(
    families="comma-separated model families to measure: gd, sr_unet, ae3d",
    threads="comma-separated torch CPU thread counts to compare; the first is the baseline's",
    channels_last="also time channels_last variants (2D families only)",
    compile="also time torch.compile variants (default inductor backend)",
    compile_threads="comma-separated thread counts at which the compiled variants are timed (each count compiles "
                    "anew: inductor bakes the thread count into its kernels)",
    compile_channels_last="also compile the channels_last variants (each compiles anew; off keeps the run short)",
    compile_timeout="seconds allowed for one variant's compilation before it is reported unsupported",
    compile_fallback_random="compiled graphs draw random numbers as eager torch does (inductor's fallback_random), "
                            "so in-model noise (the autoencoder's posterior sample) matches",
    rounds="interleaved timing rounds (the figures are medians over rounds)",
    steps="training steps per variant per round",
    warmup="untimed warm-up rounds",
    check_steps="optimizer steps from the same weights before the losses are compared",
    tolerance="largest relative loss difference from the baseline that counts as the same result",
    side_by_side="processes training at once, one thread each, in the side-by-side figures of the memory "
                 "formats that --channels_last selects (1 = none)",
    side_by_side_steps="training steps each side-by-side process times per round",
    gd_batch="batch size of the guided-diffusion UNet step (BEA 8, segmentation 24 at the cpu scale)",
    sr_batch="batch size of the SR denoiser step",
    ae_batch="batch size of the 3D autoencoder step",
    lr="AdamW learning rate of every variant",
    seed="seed of the initial weights, the batch and the per-step noise",
)


class Family:
    """A model, a fixed batch and ``loss(model, seed) -> scalar`` of one training step."""

    def __init__(self, name: str, model: torch.nn.Module, batch: dict, loss, spatial_dims: int):
        self.name, self.model, self.batch, self.loss, self.spatial_dims = name, model, batch, loss, spatial_dims


def guided_family(batch_size: int) -> Family:
    from guided_diffusion.resample import UniformSampler

    from patches.guided_diffusion import MODEL_DEFAULTS, create_seam_diffusion, create_seam_model

    model = create_seam_model(**{**MODEL_DEFAULTS, "image_size": 32, "in_channels": 4, "num_channels": 32,
                                 "num_res_blocks": 1, "num_heads": 1, "attention_resolutions": "8",
                                 "num_classes": 3})
    diffusion = create_seam_diffusion(diffusion_steps=100)
    sampler = UniformSampler(diffusion)
    batch = {"x": torch.randn(batch_size, 4, 32, 32), "y": torch.randint(0, 3, (batch_size,))}

    def loss(net, b):
        t, _ = sampler.sample(b["x"].shape[0], "cpu")
        noise = torch.randn_like(b["x"])
        return diffusion.training_losses(net, b["x"], t, model_kwargs={"y": b["y"]}, noise=noise)["loss"].mean()

    return Family("gd", model, batch, loss, 2)


def sr_family(batch_size: int) -> Family:
    from plugins.backbones.registry import TINY_BACKBONES, build_backbone
    from plugins.latent_sr.flow import NUM_TRAIN_TIMESTEPS, interpolate, sample_timesteps, velocity

    model = build_backbone("unet", latent_channels=4, latent_size=32, params=TINY_BACKBONES["unet"])
    batch = {"z0": torch.randn(batch_size, 4, 32, 32), "cond": torch.randn(batch_size, 4, 32, 32)}

    def loss(net, b):
        z0 = b["z0"]
        eps, t = torch.randn_like(z0), sample_timesteps(z0.shape[0])
        v_hat = net(torch.cat([interpolate(z0, eps, t), b["cond"]], 1), t * NUM_TRAIN_TIMESTEPS).sample
        return F.mse_loss(v_hat, velocity(z0, eps))

    return Family("sr_unet", model, batch, loss, 2)


def ae_family(batch_size: int) -> Family:
    from plugins.autoencoder.config import DEFAULTS
    from plugins.autoencoder.losses import ReconstructionLoss, kl_loss
    from plugins.autoencoder.models import KLAutoencoder
    from plugins.data.filaments import make_filament_volume

    model = KLAutoencoder(dict(spatial_dims=3, in_channels=1, out_channels=1, num_channels=[16, 32],
                               latent_channels=4, num_res_blocks=1, attention_levels=[False, False],
                               norm_num_groups=8, with_encoder_nonlocal_attn=False,
                               with_decoder_nonlocal_attn=False))
    x = torch.stack([torch.from_numpy(make_filament_volume((16,) * 3, seed=i)[0]) for i in range(batch_size)])
    recon_loss = ReconstructionLoss(DEFAULTS["autoencoder"]["training"]["loss"])
    kl_weight = DEFAULTS["autoencoder"]["training"]["kl_weight"]

    def loss(net, b):
        recon, mu, logvar = net(b["x"])
        return recon_loss(recon, b["x"]) + kl_weight * kl_loss(mu, logvar)

    return Family("ae3d", model, {"x": x[:, None]}, loss, 3)


BUILDERS = {"gd": lambda a: guided_family(a.gd_batch), "sr_unet": lambda a: sr_family(a.sr_batch),
            "ae3d": lambda a: ae_family(a.ae_batch)}


class Variant:
    """One setting of a family: its own model copy (channels_last weights) and optimizer."""

    def __init__(self, family: Family, threads: int, channels_last: bool, compiled: bool, lr: float):
        self.family, self.threads, self.channels_last, self.compiled = family, threads, channels_last, compiled
        self.name = f"threads{threads}_{'channels_last' if channels_last else 'default'}_" \
                    f"{'compile' if compiled else 'eager'}"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = copy.deepcopy(family.model).train().to(memory_format=fmt)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.net = torch.compile(model) if compiled else model
        self.status, self.error, self.first_step_s, self.loss = "ok", "", 0.0, float("nan")

    def step(self, seed: int) -> float:
        torch.set_num_threads(self.threads)
        torch.manual_seed(seed)
        np.random.seed(seed)  # guided-diffusion's UniformSampler draws t with numpy
        loss = self.family.loss(self.net, self.family.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def check(self, steps: int, seed: int, timeout: float) -> None:
        """Run ``steps`` optimizer steps (compiling on the first), then record the next step's loss."""
        start, alarm = time.perf_counter(), _alarm(timeout if self.compiled else 0)
        try:
            with alarm:
                self.step(seed)
            if alarm.fired:  # dynamo caught the timeout somewhere and ran part of the model eagerly
                raise TimeoutError(alarm.message)
        except Exception as err:  # a compiler failure of any kind is a result to report, not a crash
            self.status, self.error = "unsupported", first_line(err)
            return
        finally:
            self.first_step_s = time.perf_counter() - start
        for i in range(1, steps):
            self.step(seed + i)
        self.loss = self.step(seed + steps)


def first_line(err: BaseException) -> str:
    """``"Type: first line"`` of the innermost cause (dynamo wraps a backend's error in "backend=... raised:")."""
    while err.__cause__ is not None or getattr(err, "inner_exception", None) is not None:
        err = err.__cause__ if err.__cause__ is not None else err.inner_exception
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


class _alarm:
    """``with _alarm(s):`` raises TimeoutError after ``s`` seconds (0: no limit)."""

    def __init__(self, seconds: float):
        self.seconds, self.fired = seconds, False
        self.message = f"compilation did not finish within {seconds} s (--compile_timeout)"

    def _raise(self, *_):
        self.fired = True
        raise TimeoutError(self.message)

    def __enter__(self):
        if self.seconds:
            self.previous = signal.signal(signal.SIGALRM, self._raise)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc):
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


def thread_counts(text: str, flag: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise InputError(f"{flag}: expected distinct positive integers separated by commas, got {text!r}")
    return counts


def parse_args(argv):
    parser = make_parser(__doc__.splitlines()[0], BENCH_DEFAULTS, phrases=(BENCH_HELP,))
    parser.add_argument("--side_by_side_worker", default="", help=argparse.SUPPRESS)  # FAMILY:0|1, one process
    args = parser.parse_args(argv)
    args.family_list = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.family_list if f not in FAMILIES]
    if bad or not args.family_list:
        raise InputError(f"--families: expected a comma-separated subset of {', '.join(FAMILIES)}, "
                         f"got {args.families!r}")
    args.thread_list = thread_counts(args.threads, "--threads")
    args.compile_thread_list = thread_counts(args.compile_threads, "--compile_threads")
    for flag in ("rounds", "steps", "check_steps", "side_by_side", "side_by_side_steps", "gd_batch", "sr_batch",
                 "ae_batch"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    for flag in ("tolerance", "lr", "compile_timeout"):
        if not getattr(args, flag) > 0:
            raise InputError(f"--{flag}: expected a positive number, got {getattr(args, flag)}")
    if args.warmup < 0:
        raise InputError(f"--warmup: expected an integer >= 0, got {args.warmup}")
    return args


def bench_family(family: Family, args) -> list[dict]:
    formats = (False, True) if args.channels_last and family.spatial_dims == 2 else (False,)
    settings = [(t, cl, False) for cl in formats for t in args.thread_list]
    if args.compile:
        settings += [(t, cl, True) for cl in formats[:2 if args.compile_channels_last else 1]
                     for t in args.compile_thread_list]
    variants = [Variant(family, t, cl, c, args.lr) for t, cl, c in settings]
    for v in variants:
        v.check(args.check_steps, args.seed, args.compile_timeout)
    base = variants[0]
    timed = [v for v in variants if v.status == "ok"]
    calls = {v.name: (lambda v=v: [v.step(args.seed + k) for k in range(args.steps)]) for v in timed}
    ratios, medians = paired_ratios(calls, base.name, args.rounds, args.warmup)
    records = []
    for v in variants:
        rel = abs(v.loss - base.loss) / max(abs(base.loss), 1e-12) if v.status == "ok" else None
        step_s = medians[v.name] / args.steps if v.status == "ok" else None
        record = {"figure": "train_step", "family": family.name, "variant": v.name,
                  "value": round(1.0 / ratios[v.name], 4) if v.status == "ok" else None,
                  "value_is": f"speedup over {base.name} (median of per-round time ratios)",
                  "threads": v.threads, "channels_last": v.channels_last, "compile": v.compiled, "status": v.status,
                  "error": v.error, "median_step_s": round(step_s, 5) if step_s else None,
                  "steps_per_s": round(1.0 / step_s, 3) if step_s else None,
                  "first_step_s": round(v.first_step_s, 2), "loss": v.loss if v.status == "ok" else None,
                  "baseline_loss": base.loss, "loss_rel_diff": rel, "tolerance": args.tolerance,
                  "agree": rel is not None and rel <= args.tolerance, "check_steps": args.check_steps,
                  "batch_size": next(iter(family.batch.values())).shape[0], "rounds": args.rounds,
                  "steps": args.steps, "torch": torch.__version__, "device": "cpu"}
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def side_by_side_worker(args) -> None:
    """A process of a side-by-side round (``--side_by_side_worker FAMILY:CHANNELS_LAST``): builds its variant,
    takes a warm-up step and prints ``ready``; on a line on stdin it times ``--side_by_side_steps`` steps and
    prints ``{"step_s": ...}``, then trains on untimed until stdin closes, so no other process's timed steps
    run alone."""
    name, channels_last = args.side_by_side_worker.split(":")
    torch.manual_seed(args.seed)
    variant = Variant(BUILDERS[name](args), 1, channels_last == "1", False, args.lr)
    variant.step(args.seed)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for k in range(args.side_by_side_steps):
        variant.step(args.seed + 1 + k)
    print(json.dumps({"step_s": (time.perf_counter() - start) / args.side_by_side_steps}), flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        variant.step(args.seed)


def _round_step_s(name: str, channels_last: bool, argv: list, n: int) -> float:
    """Mean seconds per step of ``n`` worker processes started at once (fresh processes: a fork of this one,
    whose OpenMP threads may have run, can hang)."""
    command = [sys.executable, os.path.abspath(__file__), *argv,
               "--side_by_side_worker", f"{name}:{int(channels_last)}"]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(n)]
    try:
        def line(p):
            text = p.stdout.readline()
            if not text:
                err = p.stderr.read().strip().splitlines()
                raise RuntimeError(f"{name}: a side-by-side process failed: {err[-1] if err else 'no output'}")
            return text

        for p in procs:
            line(p)  # ready
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return statistics.mean(json.loads(line(p))["step_s"] for p in procs)
    finally:
        for p in procs:
            p.stdin.close()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def bench_side_by_side(name: str, args, argv: list) -> list[dict]:
    """The module docstring's side-by-side figures of family ``name`` (default vs channels_last weights; the
    default format alone with ``--channels_last False``)."""
    formats = (("default", False), ("channels_last", True))[:2 if args.channels_last else 1]
    calls = {fmt: (lambda cl=cl: _round_step_s(name, cl, argv, args.side_by_side)) for fmt, cl in formats}
    ratios, medians = paired_ratios(calls, "default", args.rounds, warmup=0, self_timed=True)
    records = []
    for fmt in calls:
        record = {"figure": "train_step_side_by_side", "family": name, "variant": fmt,
                  "value": round(1.0 / ratios[fmt], 4),
                  "value_is": "speedup over the default format (median of per-round time ratios)",
                  "processes": args.side_by_side, "threads_per_process": 1, "median_step_s": round(medians[fmt], 5),
                  "steps_per_s_per_process": round(1.0 / medians[fmt], 3), "rounds": args.rounds,
                  "steps": args.side_by_side_steps, "torch": torch.__version__, "device": "cpu"}
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.side_by_side_worker:
        side_by_side_worker(args)
        return
    import torch._inductor.config as inductor_config

    threads_at_start, random_at_start = torch.get_num_threads(), inductor_config.fallback_random
    inductor_config.fallback_random = args.compile_fallback_random
    try:
        for name in args.family_list:
            torch.manual_seed(args.seed)
            family = BUILDERS[name](args)
            bench_family(family, args)
            if args.side_by_side > 1 and family.spatial_dims == 2:
                bench_side_by_side(name, args, argv)
    finally:
        torch.set_num_threads(threads_at_start)
        inductor_config.fallback_random = random_at_start


if __name__ == "__main__":
    sys.exit(run_main(main))
