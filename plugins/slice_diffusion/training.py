"""Train a guided-diffusion UNet on BraTS axial slices with :class:`SeamTrainLoop`.

``training_defaults()`` is one dict of every flag (shared training flags, data,
model, diffusion, loop), so a script's flags and its run's ``config.json`` are
the same dict. ``run_training(args, plugin)`` builds the data, model and
diffusion, lets the :class:`SlicePlugin` extend them (insert modules, add loss
terms, heads, epoch callbacks), then trains on ``plugin.batch(batch)``. The
base plugin is plain image diffusion:

    x, cond = batch["image"], {}  # [B, C, S, S], C = number of --modalities, in --value_range
    in_channels = out_channels = C
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from guided_diffusion import logger
from torch.utils.data import DataLoader, DistributedSampler

from patches.guided_diffusion import (DIFFUSION_DEFAULTS, DIFFUSION_HELP, MODEL_DEFAULTS, MODEL_HELP, SeamTrainLoop,
                                      configure_logger, create_named_schedule_sampler, create_seam_diffusion,
                                      create_seam_model)
from patches.guided_diffusion.train_loop import checkpoint_step, resolve_resume_checkpoint
from plugins.common.errors import InputError
from plugins.common.flags import TRAIN_DEFAULTS, TRAIN_HELP
from plugins.common.resume import loader_generator
from plugins.common.run_dir import claim_run_dir
from plugins.common.run_log import EPOCH_METRICS, STEP_METRICS, truncate_metrics, write_config
from plugins.data import DATA_DEFAULTS, DATA_HELP, build_brats_datasets, settings_from_args
from plugins.data.splits import check_checkpoint_split

#: Model flags (upstream's names); channels come from --modalities.
MODEL_FLAGS = {k: v for k, v in MODEL_DEFAULTS.items() if k not in ("in_channels", "out_channels")}

LOOP_DEFAULTS = dict(
    microbatch=-1,
    ema_rate="0.9999",
    ema_warmup=True,  # diffusers' EMA warm-up (patches.ema); False = upstream's constant rate
    log_interval=10,
    save_interval=1000,
    weight_decay=0.0,
    lr_anneal_steps=0,
    use_fp16=False,
    fp16_scale_growth=1e-3,
    use_bf16=False,
    channels_last=False,
    grad_clip=0.0,
    max_consecutive_skips=10,
    schedule_sampler="uniform",
    num_workers=0,
)
#: One phrase per flag of ``LOOP_DEFAULTS`` (meaning, units), for ``--help``.
LOOP_HELP = dict(
    microbatch="samples per forward/backward pass, gradients accumulated over the batch (-1 = whole batch)",
    ema_rate="comma-separated EMA decay rates of the kept weight averages",
    ema_warmup="EMA decay follows diffusers' warm-up schedule (False = upstream's constant rate)",
    log_interval="steps between logged metrics",
    save_interval="steps between checkpoints",
    weight_decay="AdamW weight decay",
    lr_anneal_steps="steps of linear learning-rate decay to 0 (0 = constant rate)",
    use_fp16="float16 mixed precision with loss scaling (upstream's MixedPrecisionTrainer)",
    fp16_scale_growth="log2 loss-scale increase per successful fp16 step",
    use_bf16="forward and loss under bfloat16 autocast",
    channels_last="the UNet's weights (so its activations) in channels_last memory order: the same results up to "
                  "float rounding, on some CPUs faster (scripts/bench_cpu.py)",
    grad_clip="maximum total gradient norm (0 = no clipping)",
    max_consecutive_skips="non-finite steps in a row that stop the run",
    schedule_sampler="timestep sampler: uniform or loss-second-moment",
    num_workers="DataLoader worker processes (0 = load in the main process)",
)


def training_defaults() -> dict:
    """Seed-000 defaults: lr 1e-4, batch 14, 1000 diffusion steps, 128 px, 4 modalities in [-1, 1]."""
    return {**TRAIN_DEFAULTS, "batch_size": 14, "lr": 1e-4, **DATA_DEFAULTS, "value_range": "-1,1",
            **MODEL_FLAGS, "image_size": 128, **DIFFUSION_DEFAULTS, **LOOP_DEFAULTS}


#: The phrases of :func:`training_defaults`' flags (and of the model/diffusion flags evaluations repeat).
TRAINING_HELP = {**TRAIN_HELP, **DATA_HELP, **MODEL_HELP, **DIFFUSION_HELP, **LOOP_HELP}


#: The flags that define the network and the diffusion: a resumed run or an evaluation must agree on them.
ARCHITECTURE_KEYS = tuple(MODEL_FLAGS) + tuple(DIFFUSION_DEFAULTS) + ("modalities",)


class SlicePlugin:
    """What a 2D plugin overrides; this base trains plain image diffusion."""

    loop_class = SeamTrainLoop  # a subclass may take extra ``loop_options``

    def channels(self, num_modalities: int) -> tuple[int, int]:
        """``(in_channels, out_channels)`` of the UNet."""
        return num_modalities, num_modalities

    def extend(self, model, diffusion, data, args) -> None:
        """Register modules, heads, loss parameters (on ``model``) and loss terms (on ``diffusion``)."""

    def batch(self, batch: dict) -> tuple:
        """``(x_start, model_kwargs)`` from a dataset batch."""
        return batch["image"], {}

    def epoch_callbacks(self) -> list:
        """``cb(loop, epoch)`` callables run after each epoch's last step."""
        return []

    def loop_options(self) -> dict:
        """Extra :class:`SeamTrainLoop` keywords (e.g. ``backward_fn``, ``init_from_checkpoint``)."""
        return {}


class EpochBatches:
    """Batches ``plugin.batch(b)`` of one epoch at a time, resumable at any batch without side effects.

    The order of epoch ``e`` is the ``DistributedSampler``'s (seeded by ``seed + e``); ``iter_from(k)``
    starts at batch ``k`` by skipping sample indices (nothing is loaded or passed through
    ``to_batch``, whose randomness, e.g. label dropout, draws from the global generators). The
    DataLoader's own seed (worker seeds) comes from a generator seeded by ``(seed, epoch)``, so creating
    an iterator never draws from torch's global generator.
    """

    def __init__(self, dataset, to_batch, batch_size: int, seed: int, rank: int, world: int, num_workers: int):
        self.dataset, self.to_batch, self.batch_size, self.seed = dataset, to_batch, batch_size, seed
        self.num_workers = num_workers
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def iter_from(self, start: int):
        indices = list(self.sampler)[start * self.batch_size:len(self) * self.batch_size]
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=indices, drop_last=True,
                            num_workers=self.num_workers, generator=loader_generator(self.seed, self.epoch))
        for batch in loader:
            yield self.to_batch(batch)

    def __iter__(self):
        return self.iter_from(0)


def check_args(args) -> None:
    """Refuse flags no run could use, naming the flag and what was expected."""
    positive = ("batch_size", "image_size", "diffusion_steps", "log_interval", "save_interval")
    for key in positive:
        if getattr(args, key) <= 0:
            raise InputError(f"--{key}: got {getattr(args, key)}; expected a positive integer")
    if not (np.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr: got {args.lr}; expected a positive learning rate")
    if args.max_steps < 0:
        raise InputError(f"--max_steps: got {args.max_steps}; expected >= 0 (0 = no limit)")
    if not args.data_dir or not os.path.isdir(args.data_dir):
        raise InputError(f"--data_dir: {args.data_dir!r} is not a folder of BraTS subjects "
                         "(build the demo cohort: python scripts/make_demo_data.py --out_dir data/demo)")
    if args.use_fp16 and not torch.cuda.is_available():
        raise InputError("--use_fp16 True: fp16 training needs a CUDA GPU; on the CPU use --use_bf16 True")
    if not args.out_dir:
        raise InputError("--out_dir: expected the run directory to write")


def build_model_and_diffusion(args, in_channels: int, out_channels: int):
    model_kwargs = {k: getattr(args, k) for k in MODEL_FLAGS}
    diffusion_kwargs = {k: getattr(args, k) for k in DIFFUSION_DEFAULTS}
    try:
        model = create_seam_model(**model_kwargs, in_channels=in_channels, out_channels=out_channels,
                                  learn_sigma=args.learn_sigma)
        diffusion = create_seam_diffusion(**diffusion_kwargs)
    except ValueError as err:
        raise InputError(str(err)) from None
    return model, diffusion


def _quiet(*_args) -> None:
    """The start-up lines of ranks other than 0."""


def run_training(args, plugin: SlicePlugin | None = None) -> SeamTrainLoop:
    """Build everything from ``args``, let ``plugin`` extend it, train; returns the finished loop."""
    plugin = plugin or SlicePlugin()
    check_args(args)
    settings = settings_from_args(args)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model, diffusion = build_model_and_diffusion(args, *plugin.channels(len(settings.modalities)))
    run_dir = args.out_dir
    config = vars(args).copy()
    claim_run_dir(run_dir, config, resuming=bool(args.resume_checkpoint))
    fresh = plugin.loop_options().get("init_from_checkpoint", False)  # another run's weights start this one at 0
    checkpoint = resolve_resume_checkpoint(args.resume_checkpoint, run_dir)
    start = checkpoint_step(checkpoint) if checkpoint and not fresh else 0
    truncate_metrics(run_dir, STEP_METRICS, "step", start)  # records of steps the resume replays
    configure_logger(run_dir, jsonl_name=STEP_METRICS)
    write_config(run_dir, config)
    rank, world = dist.get_rank(), dist.get_world_size()
    # noise per rank; numpy's global generator drives upstream's timestep sampler
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    data = build_brats_datasets(args.data_dir, run_dir, args.csv_path, settings, args.val_fraction,
                                args.split_seed, args.cache_dir, log=logger.log if rank == 0 else _quiet,
                                progress=rank == 0, split_file=args.split_file)
    if checkpoint and os.path.realpath(os.path.dirname(checkpoint)) != os.path.realpath(run_dir):
        check_checkpoint_split(checkpoint, data.split, data.split_source)  # own run: its split.json was checked
    plugin.extend(model, diffusion, data, args)
    if args.channels_last:  # inputs stay contiguous: the noise drawn like them is the same as without
        model.to(memory_format=torch.channels_last)
    if len(data.train) < args.batch_size * world:
        raise InputError(f"--batch_size {args.batch_size}: the training split has only {len(data.train)} slices")
    batches = EpochBatches(data.train, plugin.batch, args.batch_size, args.seed, rank, world, args.num_workers)
    truncate_metrics(run_dir, EPOCH_METRICS, "epoch", start // len(batches))
    loop = plugin.loop_class(
        model=model, diffusion=diffusion, data=batches,
        batch_size=args.batch_size, microbatch=args.microbatch, lr=args.lr, ema_rate=args.ema_rate,
        log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth,
        schedule_sampler=create_named_schedule_sampler(args.schedule_sampler, diffusion),
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, max_steps=args.max_steps,
        epoch_callbacks=plugin.epoch_callbacks(), max_consecutive_skips=args.max_consecutive_skips,
        grad_clip=args.grad_clip, use_bf16=args.use_bf16, ema_warmup=args.ema_warmup, run_dir=run_dir,
        **plugin.loop_options(),
    )
    loop.run_loop()
    return loop
