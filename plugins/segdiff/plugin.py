"""Segmentation diffusion as a :class:`SlicePlugin`: flags, checks, and the wiring of every piece.

``x_start = 2 * seg - 1`` (the whole-tumour mask in [-1, 1], [N, 1, S, S]);
``model_kwargs = {"concat": image [N, M, S, S]}`` plus ``"labels"`` (the grades) when the
classification loss is on. The UNet has ``M + 1`` input channels and 1 output channel.
"""

from __future__ import annotations

import math

from guided_diffusion import logger
from torch.utils.data import DataLoader

from patches.checkpoints import CheckpointError
from patches.guided_diffusion import DIFFUSION_DEFAULTS, create_seam_diffusion
from patches.guided_diffusion.train_loop import resolve_resume_checkpoint
from plugins.common.errors import InputError
from plugins.data.splits import check_checkpoint_split
from plugins.segdiff.gradients import SURGERIES, TaskGradients
from plugins.segdiff.heads import attach_segdiff, count_parameters
from plugins.segdiff.loop import SegDiffTrainLoop
from plugins.segdiff.objective import SegDiffObjective
from plugins.segdiff.scoring import FlairThreshold
from plugins.segdiff.stages import Stage, apply_stage, load_stage_weights, record_stage
from plugins.segdiff.validation import EpochValidation
from plugins.slice_diffusion.training import SlicePlugin, training_defaults

DATA_NAMES = ("BRATS",)

#: Seed-002 flags of segmentation diffusion (on top of the slice trainer's).
SEGDIFF_DEFAULTS = dict(
    data_name="BRATS",
    use_cls_head=True,
    focal_gamma=2.0,
    seg_focal_gamma=1.5,
    seg_focal_lambda=0.5,
    grad_surgery="none",
    grad_probe=True,
    calib_width=32,
    uw_lr=0.0,
    val_num_ensemble=3,
    val_timestep_respacing="",
    val_interval=1,
)

#: DDIM steps of validation sampling when --val_timestep_respacing is empty (about this many).
VAL_DDIM_STEPS = 25

SEGDIFF_HELP = dict(
    stage="1 segmentation (head frozen or absent), 2 the classification head only, 3 everything with uncertainty "
          "weighting",
    data_name="dataset layout (BRATS)",
    use_cls_head="add the HGG/LGG classification head and uncertainty weighting",
    focal_gamma="gamma of the classification focal loss",
    seg_focal_gamma="gamma of the segmentation focal loss on the calibration map",
    seg_focal_lambda="weight of the segmentation focal loss (L_seg = mse + Dice + lambda focal)",
    grad_surgery="none, or pcgrad: project conflicting task gradients",
    grad_probe="log the cosine of the two task gradients on the shared encoder every --log_interval",
    calib_width="hidden channels of the calibration head",
    uw_lr="learning rate of the log-sigmas of uncertainty weighting (0 = --lr, the stage-1 rate)",
    val_num_ensemble="DDIM samples per validation slice, fused by their mean",
    val_timestep_respacing="DDIM steps of validation sampling, ddimN (empty: about 25)",
    val_interval="epochs between validations (0 = only at the end of the run, which always validates)",
    csv_path="grade CSV (BraTS_2020_subject_ID, Grade)",
    num_ensemble="sampled masks per slice",
    timestep_respacing="ddimN: DDIM in N steps; N: ancestral over N respaced steps; empty: every step",
    num_eval_cases="validation subjects to score (0 = all)",
    num_grid_slices="rows of grid.png",
)


#: Flags that change the network: a resumed run, a next stage or an evaluation must agree on them.
SEGDIFF_ARCHITECTURE_KEYS = ("use_cls_head", "calib_width")


def segdiff_training_defaults() -> dict:
    """Seed 002's defaults: 256 px, 128 channels, 2 res blocks, 1000 steps, lr 1e-4, batch 4, grad clip 1.0."""
    return {**training_defaults(), "image_size": 256, "num_channels": 128, "num_res_blocks": 2, "batch_size": 4,
            "lr": 1e-4, "save_interval": 5000, "log_interval": 100, "grad_clip": 1.0, **SEGDIFF_DEFAULTS}


def check_segdiff_args(args, stage: Stage | None = None) -> None:
    """Refuse flag combinations no segmentation run could use (one line, naming the flag)."""
    if args.data_name.upper() not in DATA_NAMES:
        raise InputError(f"--data_name {args.data_name!r}: expected one of {', '.join(DATA_NAMES)}")
    needs_grades = stage.mode != "seg" if stage else args.use_cls_head
    if needs_grades and not args.csv_path:
        which = f"--stage {stage.number}" if stage else "--use_cls_head True"
        raise InputError(f"{which} needs --csv_path (the grade CSV with BraTS_2020_subject_ID and Grade columns)")
    if stage and stage.number > 1 and not args.use_cls_head:
        raise InputError(f"--stage {stage.number} --use_cls_head False: stages 2 and 3 train the classification "
                         "head (only stage 1 may run without it)")
    if args.uw_lr < 0:
        raise InputError(f"--uw_lr: got {args.uw_lr}; expected >= 0 (0 = the stage-1 rate, --lr)")
    if args.use_fp16 and args.uw_lr not in (0, args.lr):
        raise InputError("--uw_lr with --use_fp16 True: fp16 flattens the parameters into one group; use --use_bf16")
    if args.val_num_ensemble <= 0:
        raise InputError(f"--val_num_ensemble: got {args.val_num_ensemble}; expected a positive integer")
    if args.val_interval < 0:
        raise InputError(f"--val_interval: got {args.val_interval}; expected epochs >= 0 (0 = only at the end)")
    if args.val_timestep_respacing and not args.val_timestep_respacing.startswith("ddim"):
        raise InputError(f"--val_timestep_respacing {args.val_timestep_respacing!r}: expected ddimN (DDIM in N steps)")
    try:
        sampling_diffusion(args)
    except ValueError as err:
        raise InputError(f"--val_timestep_respacing {args.val_timestep_respacing!r}: {err} "
                         f"(with --diffusion_steps {args.diffusion_steps})") from None
    for flag in ("focal_gamma", "seg_focal_gamma", "seg_focal_lambda"):
        if getattr(args, flag) < 0:
            raise InputError(f"--{flag}: got {getattr(args, flag)}; expected >= 0")
    if args.calib_width <= 0:
        raise InputError(f"--calib_width: got {args.calib_width}; expected a positive integer")
    if args.grad_surgery not in SURGERIES:
        raise InputError(f"--grad_surgery {args.grad_surgery!r}: expected one of {', '.join(SURGERIES)}")
    if args.grad_surgery != "none":
        if not (stage.mode == "uw" if stage else args.use_cls_head):
            raise InputError(f"--grad_surgery {args.grad_surgery}: needs both tasks (--use_cls_head True, or --stage 3)")
        if args.schedule_sampler != "uniform":
            raise InputError(f"--grad_surgery {args.grad_surgery}: needs --schedule_sampler uniform")
        if args.use_fp16:
            raise InputError(f"--grad_surgery {args.grad_surgery}: not with --use_fp16 (use --use_bf16)")
    if stage and args.use_fp16:
        raise InputError(f"--stage {stage.number} --use_fp16 True: frozen parameters need fp32 master weights; "
                         "use --use_bf16 True")


def resumed_checkpoint(args) -> str:
    """The checkpoint ``--resume_checkpoint`` resumes (``latest`` looks in ``--out_dir``), or ""."""
    try:
        return resolve_resume_checkpoint(args.resume_checkpoint, args.out_dir)
    except CheckpointError as err:
        raise InputError(str(err)) from None


def validation_respacing(args) -> str:
    """``--val_timestep_respacing``, or ``ddimN`` with the stride ``ceil(T / 25)`` (N about 25; every T works)."""
    if args.val_timestep_respacing:
        return args.val_timestep_respacing
    stride = math.ceil(args.diffusion_steps / VAL_DDIM_STEPS)
    return f"ddim{len(range(0, args.diffusion_steps, stride))}"


def sampling_diffusion(args):
    """The training diffusion respaced by :func:`validation_respacing` (DDIM sampling in validation)."""
    return create_seam_diffusion(**{**{k: getattr(args, k) for k in DIFFUSION_DEFAULTS},
                                    "timestep_respacing": validation_respacing(args)})


class SegDiffPlugin(SlicePlugin):
    """Calibration head, optional classification head + uncertainty weighting, stage freezing, validation.

    ``init_checkpoint``: weights to start from (the previous stage's), loaded before training starts.
    """

    loop_class = SegDiffTrainLoop

    def __init__(self, args, stage: Stage | None = None, init_checkpoint: str = ""):
        check_segdiff_args(args, stage)
        self.args = args
        self.stage = stage
        self.with_head = bool(args.use_cls_head)
        self.mode = stage.mode if stage else ("uw" if self.with_head else "seg")
        self.init_checkpoint = init_checkpoint
        self.objective = None
        self.gradients = None
        self.validation = None

    def channels(self, num_modalities: int) -> tuple[int, int]:
        return num_modalities + 1, 1

    def extend(self, model, diffusion, data, args) -> None:
        attach_segdiff(model, use_cls_head=self.with_head, calib_width=args.calib_width)
        logger.log(f"segdiff: calibration head {count_parameters(model.calib_head)} parameters; "
                   f"classification head {'on' if self.with_head else 'off'}; loss mode {self.mode}")
        record_stage(args.out_dir, self.stage.number if self.stage else 0)
        if self.init_checkpoint:
            check_checkpoint_split(self.init_checkpoint, data.split, data.split_source, log=logger.log)
            fresh = load_stage_weights(model, self.init_checkpoint)
            logger.log(f"initialised from {self.init_checkpoint}" + (f"; new: {', '.join(fresh)}" if fresh else ""))
        if self.stage:
            counts = apply_stage(model, self.stage)
            logger.log(f"stage {self.stage.number}: {counts['trainable']} parameters trainable, "
                       f"{counts['frozen']} frozen; lr {args.lr:g}")
        alpha = None
        if data.class_stats:
            alpha = [data.class_stats["alpha_LGG"], data.class_stats["alpha_HGG"]]
        self.objective = SegDiffObjective(self.mode, seg_focal_gamma=args.seg_focal_gamma,
                                          seg_focal_lambda=args.seg_focal_lambda, focal_gamma=args.focal_gamma,
                                          alpha=alpha)
        self.objective.install(diffusion)
        self.gradients = TaskGradients(self.objective, model, args.grad_surgery, args.grad_probe)
        val_loader = DataLoader(data.val, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
        reference = reference_loader = None
        if "flair" in data.train.settings.modalities:
            reference = FlairThreshold(data.train.settings.modalities.index("flair"), data.train.settings.value_range)
            reference_loader = DataLoader(data.train, batch_size=64, shuffle=False, num_workers=args.num_workers)
        self.validation = EpochValidation(args.out_dir, diffusion, sampling_diffusion(args), self.objective,
                                          val_loader, self.batch, num_ensemble=args.val_num_ensemble, seed=args.seed,
                                          interval=args.val_interval,
                                          reference=reference, reference_loader=reference_loader, log=logger.log)

    def batch(self, batch: dict) -> tuple:
        kwargs = {"concat": batch["image"]}
        if self.objective.uses_cls:
            kwargs["labels"] = batch["grade"]
        return batch["seg"] * 2 - 1, kwargs

    def epoch_callbacks(self) -> list:
        return [self.validation]

    def loop_options(self) -> dict:
        return {"backward_fn": self.gradients, "uw_lr": self.args.uw_lr}

    def finish(self, loop) -> dict | None:
        """End-of-run validation (:meth:`EpochValidation.final`): the final metrics row, ``validation/``."""
        return self.validation.final(loop)


def segdiff_model_for_config(config: dict, num_modalities: int):
    """The network of a saved run's ``config`` (model flags, ``use_cls_head``, ``calib_width``), heads attached."""
    from patches.guided_diffusion import create_seam_model
    from plugins.slice_diffusion.training import MODEL_FLAGS

    try:
        model = create_seam_model(**{k: config[k] for k in MODEL_FLAGS}, in_channels=num_modalities + 1,
                                  out_channels=1, learn_sigma=config["learn_sigma"])
    except ValueError as err:
        raise InputError(str(err)) from None
    attach_segdiff(model, use_cls_head=bool(config["use_cls_head"]), calib_width=int(config["calib_width"]))
    return model

