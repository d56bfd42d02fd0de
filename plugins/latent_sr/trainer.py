"""accelerate training loop for latent rectified-flow SR (``scripts/train_sr.py``).

Run directory (``--out_dir``/``--output_dir``): ``config.json``, ``metrics_step.jsonl``,
``logs/`` (TensorBoard), ``checkpoints/checkpoint-N/`` (``save_state`` + ``ema.pt``,
written to a temp folder and renamed), ``pipeline/`` (:class:`SRFlowPipeline` with the
EMA denoiser, written at the end). Flags: ``TRAIN_DEFAULTS`` + :data:`SR_DEFAULTS` +
``LOSS_DEFAULTS``; ``--config`` YAML values sit between the defaults and the command line.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import SchedulerType, get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from patches.checkpoints import atomic_save, load_checkpoint, save_state_folder
from plugins.backbones.registry import build_backbone, check_backbone_name, load_backbone_params
from plugins.common.errors import InputError
from plugins.common.flags import LATENT_ALIASES, TRAIN_DEFAULTS, TRAIN_HELP, make_parser
from plugins.common.resume import loader_generator
from plugins.common.run_dir import claim_run_dir
from plugins.common.run_log import STEP_METRICS, MetricsLog, truncate_metrics, write_config
from plugins.common.yaml_io import safe_load_unique
from plugins.data.sr_pairs import SRPairDataset
from plugins.latent_sr import codec
from plugins.latent_sr.evaluate import evaluate_pipeline
from plugins.latent_sr.objective import LOSS_DEFAULTS, LOSS_HELP, SRFlowObjective, check_loss_config
from plugins.latent_sr.pipeline import SRFlowPipeline, default_scheduler

#: Trainer flags beyond the shared ones (``TRAIN_DEFAULTS`` values overridden here).
SR_DEFAULTS = dict(
    data_dir="data/demo/sr",
    out_dir="runs/sr",
    max_steps=2000,
    batch_size=8,
    lr=1e-4,
    config="",
    vae_path="",
    vae_pixel_range="unit",
    backbone="unet",
    backbone_config="config/sr_backbones.yaml",
    mixed_precision="no",
    gradient_accumulation_steps=1,
    max_grad_norm=1.0,
    adam_weight_decay=0.0,
    lr_warmup_steps=0,
    lr_scheduler="constant_with_warmup",
    use_ema=True,
    ema_decay=0.999,
    checkpointing_steps=500,
    checkpoints_total_limit=3,
    log_every=10,
    validation_steps=0,
    validation_samples=16,
    validation_inference_steps=10,
    report_to="tensorboard",
    num_workers=0,
)
#: One phrase per flag of ``SR_DEFAULTS`` (meaning, units), for ``--help``.
SR_HELP = dict(
    data_dir="SR pair folder (train/ and val/ with hr/ and lr/ .npy slices)",
    out_dir="run folder to write (checkpoints, pipeline, config, metrics)",
    max_steps="optimizer steps to train",
    batch_size="training pairs per step (per process)",
    lr="AdamW learning rate",
    config="YAML of flag values, between the defaults and the command line (empty: none)",
    vae_path="frozen AutoencoderKL folder (diffusers format) whose latents are learnt",
    vae_pixel_range="pixel range the VAE was trained on: unit [0, 1] or signed [-1, 1]",
    backbone="velocity network: a name from --backbone_config",
    backbone_config="YAML of backbone architectures",
    mixed_precision="accelerate mixed precision: no, fp16 or bf16",
    gradient_accumulation_steps="batches accumulated per optimizer step",
    max_grad_norm="maximum total gradient norm (0 = no clipping)",
    adam_weight_decay="AdamW weight decay",
    lr_warmup_steps="steps of linear learning-rate warm-up",
    lr_scheduler="diffusers learning-rate schedule after the warm-up: constant_with_warmup, cosine (to 0 at "
                 "--max_steps), linear, ...",
    use_ema="keep an EMA of the weights (diffusers' EMAModel) and sample with it",
    ema_decay="maximum EMA decay per step",
    checkpointing_steps="steps between accelerate checkpoints",
    checkpoints_total_limit="checkpoints kept (older ones removed)",
    log_every="steps between logged metrics",
    validation_steps="steps between validation scores on the val pairs, logged as val_psnr/val_ssim (0: off)",
    validation_samples="val pairs sampled at each validation (0: all)",
    validation_inference_steps="Euler steps per validation sample",
    report_to="accelerate tracker, e.g. tensorboard (empty: none)",
    num_workers="DataLoader worker processes (0 = load in the main process)",
)
CHECKPOINT_DIR = "checkpoints"
PIPELINE_DIR = "pipeline"
MIXED_PRECISION = ("no", "fp16", "bf16")
#: diffusers' schedules that need no extra arguments (``SchedulerType`` less the piecewise one).
LR_SCHEDULERS = tuple(t.value for t in SchedulerType if t.value != "piecewise_constant")


def all_defaults(overrides: dict | None = None) -> dict:
    return {**TRAIN_DEFAULTS, **SR_DEFAULTS, **LOSS_DEFAULTS, **(overrides or {})}


def parse_config(argv=None, overrides: dict | None = None, description: str = "") -> dict:
    """Flags -> config dict; precedence: defaults < ``overrides`` < ``--config`` YAML < command line."""
    defaults = all_defaults(overrides)
    parser = make_parser(description or "Latent rectified-flow super-resolution training (accelerate).",
                         defaults, aliases=LATENT_ALIASES, phrases=(TRAIN_HELP, SR_HELP, LOSS_HELP))
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**_read_yaml_flags(first.config, defaults))
    return vars(parser.parse_args(argv))


def _read_yaml_flags(path: str, defaults: dict) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"--config: {path} not found")
    with open(path) as f:
        try:
            doc = safe_load_unique(f) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping of flag names to values")
    unknown = sorted(set(doc) - set(defaults))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown}; keys are the trainer's flag names")
    return doc


def check_config(cfg: dict) -> None:
    """Refuse bad flag values with one line, before anything is written."""
    check_loss_config(cfg)
    check_backbone_name(cfg["backbone"])
    codec.check_pixel_range(cfg["vae_pixel_range"])
    if cfg["lr_scheduler"] not in LR_SCHEDULERS:
        raise InputError(f"--lr_scheduler: expected one of {', '.join(LR_SCHEDULERS)}, got {cfg['lr_scheduler']!r}")
    if cfg["mixed_precision"] not in MIXED_PRECISION:
        raise InputError(f"--mixed_precision: expected one of {MIXED_PRECISION}, got {cfg['mixed_precision']!r}")
    for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpointing_steps", "log_every"):
        if cfg[key] < 1:
            raise InputError(f"--{key}: expected a positive integer, got {cfg[key]}")
    for key in ("validation_steps", "validation_samples"):
        if cfg[key] < 0:
            raise InputError(f"--{key}: expected an integer >= 0, got {cfg[key]}")
    if cfg["validation_inference_steps"] < 1:
        raise InputError(f"--validation_inference_steps: expected a positive integer, got "
                         f"{cfg['validation_inference_steps']}")
    if not cfg["out_dir"]:
        raise InputError("--out_dir/--output_dir: required (the run directory)")
    if not (math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        raise InputError(f"--lr/--learning_rate: got {cfg['lr']}; expected a positive learning rate")
    if not 0.0 <= cfg["ema_decay"] < 1.0:
        raise InputError(f"--ema_decay: expected a value in [0, 1), got {cfg['ema_decay']}")


def build_components(cfg: dict):
    """Dataset, frozen VAE and denoiser, with every size checked against the others."""
    dataset = SRPairDataset(cfg["data_dir"], "train")
    vae = codec.load_frozen_vae(cfg["vae_path"])
    factor = codec.downsample_factor(vae)
    if dataset.hr_size % factor:
        raise InputError(f"--data_dir: high-res size {dataset.hr_size} is not divisible by the VAE's downsampling "
                         f"factor {factor} ({cfg['vae_path']})")
    params = load_backbone_params(cfg["backbone_config"], cfg["backbone"])
    denoiser = build_backbone(cfg["backbone"], vae.config.latent_channels, dataset.hr_size // factor, params,
                              source=f"{cfg['backbone_config']} ({cfg['backbone']})")
    return dataset, vae, denoiser


def checkpoint_step(path: str) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(path)))
    if not match:
        raise InputError(f"--resume_checkpoint: {path} is not a checkpoint-N folder")
    return int(match.group(1))


def resolve_resume(cfg: dict) -> str | None:
    """``latest`` -> newest ``checkpoints/checkpoint-N`` of the run (None when there is none yet)."""
    value = cfg["resume_checkpoint"]
    if not value:
        return None
    if value == "latest":
        root = os.path.join(cfg["out_dir"], CHECKPOINT_DIR)
        found = [d for d in os.listdir(root) if re.fullmatch(r"checkpoint-\d+", d)] if os.path.isdir(root) else []
        return os.path.join(root, max(found, key=checkpoint_step)) if found else None
    if not os.path.isdir(value):
        raise InputError(f"--resume_checkpoint: {value} not found (expected a checkpoint-N folder or 'latest')")
    checkpoint_step(value)
    return value


def save_checkpoint(accelerator: Accelerator, ema, cfg: dict, step: int) -> str:
    """``save_state`` + ``ema.pt`` into a temp folder, renamed to ``checkpoint-step``; prune old ones."""
    root = os.path.join(cfg["out_dir"], CHECKPOINT_DIR)
    final, tmp = os.path.join(root, f"checkpoint-{step}"), os.path.join(root, f".tmp-checkpoint-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    os.makedirs(tmp, exist_ok=True)
    save_state_folder(accelerator.save_state, tmp)
    if accelerator.is_main_process:
        if ema is not None:
            atomic_save(ema.state_dict(), os.path.join(tmp, "ema.pt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        kept = sorted((d for d in os.listdir(root) if re.fullmatch(r"checkpoint-\d+", d)), key=checkpoint_step)
        for old in kept[:-cfg["checkpoints_total_limit"]] if cfg["checkpoints_total_limit"] > 0 else []:
            shutil.rmtree(os.path.join(root, old))
    accelerator.wait_for_everyone()
    return final


def scored_pipeline(denoiser, vae, ema, cfg: dict, scale: int, device="cpu") -> SRFlowPipeline:
    """A pipeline around a copy of the EMA (or raw) denoiser: the weights an evaluation scores."""
    model = copy.deepcopy(denoiser).to(device)
    if ema is not None:
        ema.copy_to(model.parameters())
    return SRFlowPipeline(model.eval(), vae.to(device), default_scheduler(cfg["timestep_shift"]),
                          pixel_range=cfg["vae_pixel_range"], scale=scale)


def validate(denoiser, vae, ema, cfg: dict, val: SRPairDataset, device) -> dict:
    """``{val_psnr, val_ssim}``: means over ``--validation_samples`` val pairs of the scored weights' samples."""
    pipe = scored_pipeline(denoiser, vae, ema, cfg, val.scale, device)
    scores, _, _ = evaluate_pipeline(pipe, val, cfg["validation_inference_steps"], cfg["batch_size"], cfg["seed"],
                                     cfg["validation_samples"], progress=False)
    return {"val_psnr": scores["psnr"], "val_ssim": scores["ssim"]}


def save_pipeline(denoiser, vae, ema, cfg: dict, scale: int) -> str:
    """The EMA (or raw) denoiser, the VAE and the sampler as one ``save_pretrained`` folder."""
    pipe = scored_pipeline(denoiser, vae, ema, cfg, scale)
    final, tmp = os.path.join(cfg["out_dir"], PIPELINE_DIR), os.path.join(cfg["out_dir"], f".tmp-{PIPELINE_DIR}")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def train(cfg: dict) -> dict:
    """Train to ``max_steps`` (resuming when asked); return ``{"denoiser", "step", "pipeline_dir", "logs"}``."""
    check_config(cfg)
    set_seed(cfg["seed"])
    dataset, vae, denoiser = build_components(cfg)
    val = SRPairDataset(cfg["data_dir"], "val") if cfg["validation_steps"] else None
    resume = resolve_resume(cfg)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"], mixed_precision=cfg["mixed_precision"],
        log_with=cfg["report_to"] or None,
        project_config=ProjectConfiguration(project_dir=cfg["out_dir"],
                                            logging_dir=os.path.join(cfg["out_dir"], "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    objective = SRFlowObjective(vae, cfg, dataset.scale, cfg["vae_pixel_range"])
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=cfg["lr"], weight_decay=cfg["adam_weight_decay"])
    lr_scheduler = get_scheduler(cfg["lr_scheduler"], optimizer,
                                 num_warmup_steps=cfg["lr_warmup_steps"] * accelerator.num_processes,
                                 num_training_steps=cfg["max_steps"] * accelerator.num_processes)
    ema = EMAModel(denoiser.parameters(), decay=cfg["ema_decay"]) if cfg["use_ema"] else None
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=True, num_workers=cfg["num_workers"],
                        drop_last=len(dataset) >= cfg["batch_size"] * accelerator.num_processes,
                        generator=loader_generator(cfg["seed"]))
    denoiser, optimizer, loader, lr_scheduler = accelerator.prepare(denoiser, optimizer, loader, lr_scheduler)
    vae.to(accelerator.device)
    if ema is not None:
        ema.to(accelerator.device)
    set_seed(cfg["seed"], device_specific=True)

    claim_run_dir(cfg["out_dir"], cfg, resuming=bool(cfg["resume_checkpoint"]))
    step = 0 if resume is None else checkpoint_step(resume)
    if accelerator.is_main_process:
        truncate_metrics(cfg["out_dir"], STEP_METRICS, "step", step + 1)
    if resume is not None:
        accelerator.load_state(resume)
        if ema is not None:
            ema.load_state_dict(load_checkpoint(os.path.join(resume, "ema.pt")))
    if accelerator.is_main_process:
        write_config(cfg["out_dir"], {**cfg, "num_processes": accelerator.num_processes})
    if cfg["report_to"]:
        accelerator.init_trackers("sr", config={k: v for k, v in cfg.items() if isinstance(v, (int, float, str))})
    metrics = MetricsLog(cfg["out_dir"])

    per_epoch = max(1, math.ceil(len(loader) / cfg["gradient_accumulation_steps"]))
    epoch, skip = step // per_epoch, (step % per_epoch) * cfg["gradient_accumulation_steps"]
    progress = tqdm(total=cfg["max_steps"], initial=step, desc="train_sr", disable=not accelerator.is_main_process)
    logs: dict = {}
    denoiser.train()
    while step < cfg["max_steps"]:
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            with accelerator.accumulate(denoiser):
                with accelerator.autocast():
                    loss, logs = objective(denoiser, batch)
                accelerator.backward(loss)
                logs.update(objective.grad_logs())
                if accelerator.sync_gradients and cfg["max_grad_norm"] > 0:
                    accelerator.clip_grad_norm_(denoiser.parameters(), cfg["max_grad_norm"])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(accelerator.unwrap_model(denoiser).parameters())
            step += 1
            progress.update(1)
            values = {k: float(v) for k, v in logs.items()} | {"lr": lr_scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{values['loss']:.4f}")
            if cfg["validation_steps"] and accelerator.is_main_process and (
                    step % cfg["validation_steps"] == 0 or step == cfg["max_steps"]):
                values.update(validate(accelerator.unwrap_model(denoiser), vae, ema, cfg, val, accelerator.device))
                denoiser.train()
            if step % cfg["log_every"] == 0 or step == cfg["max_steps"] or "val_psnr" in values:
                accelerator.log(values, step=step)
                metrics.log_step(step, values)
            if step % cfg["checkpointing_steps"] == 0 or step == cfg["max_steps"]:
                save_checkpoint(accelerator, ema, cfg, step)
            if step >= cfg["max_steps"]:
                break
        epoch += 1
    progress.close()
    model = accelerator.unwrap_model(denoiser)
    pipeline_dir = os.path.join(cfg["out_dir"], PIPELINE_DIR)
    if accelerator.is_main_process:
        save_pipeline(model, vae, ema, cfg, dataset.scale)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"denoiser": model, "step": step, "pipeline_dir": pipeline_dir, "logs": logs}


def main(argv=None, overrides: dict | None = None, description: str = "") -> dict:
    return train(parse_config(argv, overrides, description))
