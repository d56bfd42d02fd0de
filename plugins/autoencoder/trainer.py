"""The AutoencoderKL training loop on accelerate.

Per optimizer step the generator loss is

    L = sum_k w_k * lambda_k * L_k (reconstruction terms, :class:`ReconstructionLoss`)
        + kl_weight * KL + perceptual_weight * L_perc + adv_weight * lambda_adv * L_adv,

lambda = 1 with ``weighting: fixed``. With ``weighting: adaptive`` (:func:`adaptive_weights`
at the decoder's last layer) the Dice lambda balances Dice against the pixel term, and the
adversarial lambda is taming-transformers' ``calculate_adaptive_weight``: the reconstruction
loss it balances against is ``sum_k w_k lambda_k L_k + perceptual_weight * L_perc`` (taming's
``nll_loss``: pixel + perceptual). The adversarial terms (MONAI ``PatchDiscriminator`` +
``PatchAdversarialLoss``, least squares) start at epoch ``autoencoder_warm_up_n_epochs``; the
discriminator minimises adv_weight * (L_D(fake) + L_D(real)) / 2. Both backward passes run
first, then both optimizers step with ONE ``GradScaler.update()`` per iteration under fp16
(:func:`step_optimizers`; accelerate's optimizer wrapper would update the scale after each).
With denoising on, the model sees a corrupted input and is scored against the clean one.

Validation streams the validation loader (each rank its share, never all volumes at once),
scores every volume (:mod:`plugins.autoencoder.metrics`), gathers the rows of all ranks and
writes ``eval/cases.csv`` (one row per volume) and ``eval/metrics.json`` (means over the
volumes, the all-black reconstruction's under ``reference_black``).

Differences from taming-transformers' ``VQLPIPSWithDiscriminator`` (deliberate):

| taming | here | why |
|---|---|---|
| pixel term ``mean abs(x - x_rec)`` | the chosen ``reconstruction_loss_type`` terms | seed 001's losses |
| hinge / vanilla GAN loss | least squares (MONAI ``PatchAdversarialLoss``) | MONAI's AutoencoderKL recipe |
| adaptive adversarial weight always on | only with ``weighting: adaptive`` | ``fixed`` keeps seed 001's plain sum |
| one optimizer step per ``optimizer_idx`` (Lightning) | both backward, then both steps, one scaler update | one GradScaler for two optimizers |

Run directory: ``config.json``, ``metrics_step.jsonl``, ``metrics_epoch.jsonl``,
TensorBoard events (``tensorboard/``), ``samples/*.png``, ``eval/{metrics.json, cases.csv}``,
``checkpoints/checkpoint-STEP/`` (``accelerator.save_state`` +
``train_state.json``, written to a temp folder and renamed) and the final
model (:func:`save_autoencoder`, with the measured latent scaling factor).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from matplotlib import image as mpl_image
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, gather_object, set_seed
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from patches.checkpoints import save_state_folder
from plugins.autoencoder.adaptive import adaptive_weights
from plugins.autoencoder.config import flatten, validate
from plugins.autoencoder.data import build_datasets
from plugins.autoencoder.denoising import corrupt
from plugins.autoencoder.images import reconstruction_panels
from plugins.autoencoder.losses import ReconstructionLoss, kl_loss
from plugins.autoencoder.metrics import foreground_scores, mean_over_cases, psnr
from plugins.autoencoder.models import KLAutoencoder, measure_scaling_factor, model_kwargs, save_autoencoder
from plugins.autoencoder.perceptual import build_perceptual_loss
from plugins.common.errors import InputError
from plugins.common.resume import loader_generator
from plugins.common.run_dir import claim_run_dir
from plugins.common.run_log import (EPOCH_METRICS, STEP_METRICS, MetricsLog, truncate_metrics, write_case_table,
                                    write_config, write_json_atomic)

CHECKPOINTS = "checkpoints"
STATE_FILE = "train_state.json"
TERM_NAMES = {"recon": "pixel_loss", "dice": "dice_loss"}
SCALING_BATCHES = 8
EVAL_DIR = "eval"


def step_optimizers(optimizers: list, scaler) -> None:
    """Step every optimizer, then update the GradScaler once (PyTorch AMP with several optimizers).

    ``optimizers`` are plain torch optimizers; ``scaler`` a ``GradScaler`` or None (no fp16).
    """
    if scaler is None:
        for opt in optimizers:
            opt.step()
        return
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()


def find_checkpoint(run_dir: str, spec: str) -> str | None:
    """``""`` -> None; ``latest`` -> newest ``run_dir/checkpoints/checkpoint-N`` (None if none); else the path."""
    if not spec:
        return None
    if spec == "latest":
        folder = os.path.join(run_dir, CHECKPOINTS)
        steps = [int(n.split("-")[1]) for n in os.listdir(folder)
                 if n.startswith("checkpoint-") and n.split("-")[1].isdigit()] if os.path.isdir(folder) else []
        return os.path.join(folder, f"checkpoint-{max(steps)}") if steps else None
    if not os.path.isfile(os.path.join(spec, STATE_FILE)):
        raise InputError(f"autoencoder.training.resume_from_checkpoint: {spec!r} is not a checkpoint folder "
                         f"(expected {STATE_FILE} inside); use 'latest' or a checkpoints/checkpoint-N path")
    return spec


def check_discriminator_fits(disc: torch.nn.Module, shape: tuple, num_layers: int) -> None:
    """Refuse a training size the discriminator's batch norms cannot train on (one value per channel),
    before any step: probed with a shape-only (meta) forward of a ``shape`` batch."""
    try:
        copy.deepcopy(disc).to("meta").train()(torch.empty(shape, device="meta"))
    except (ValueError, RuntimeError) as err:
        raise InputError(f"data.crop_size: training size {tuple(shape[2:])} at batch size {shape[0]} is too small "
                         f"for the {num_layers}-layer patch discriminator ({str(err).splitlines()[0]}); use larger "
                         f"crops or batches, fewer autoencoder.training.disc_num_layers, or adv_weight 0") from None


class AutoencoderTrainer:
    """Build everything from a validated config (refusing bad input before writing anything), then ``train()``."""

    def __init__(self, cfg: dict):
        self.cfg = validate(cfg)
        ae, t = cfg["autoencoder"], cfg["autoencoder"]["training"]
        self.t = t
        self.recon_loss = ReconstructionLoss(t["loss"])
        self.perceptual = build_perceptual_loss(ae["spatial_dims"], t["perceptual_weight"], t["perceptual"])
        self.train_set, self.val_set = build_datasets(cfg["data"], ae["spatial_dims"], ae["in_channels"],
                                                        t["seed"])
        factor = 2 ** (len(ae["num_channels"]) - 1)
        if any(s % factor for s in self.train_set.crop):
            raise InputError(f"data.crop_size: the training size {self.train_set.crop} must be divisible by "
                             f"{factor} (2^(len(num_channels) - 1)); set data.crop_size")
        self.run_dir = t["output_dir"]
        if not self.run_dir:
            raise InputError("--out_dir: expected a run directory")
        self.resume_from = find_checkpoint(self.run_dir, t["resume_from_checkpoint"])

        self.accelerator = Accelerator(
            gradient_accumulation_steps=t["gradient_accumulation_steps"], mixed_precision=t["mixed_precision"],
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=self.run_dir, logging_dir=self.run_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t["seed"]))
        set_seed(t["seed"])
        model = KLAutoencoder(model_kwargs(ae), gradient_checkpointing=t["use_gradient_checkpointing"])
        opt_g = torch.optim.Adam(model.parameters(), lr=t["learning_rate"])
        train_loader = DataLoader(self.train_set, batch_size=t["batch_size"], shuffle=True,
                                  num_workers=cfg["data"]["num_workers"], generator=loader_generator(t["seed"]))
        val_loader = DataLoader(self.val_set, batch_size=t["batch_size"], shuffle=False,
                                num_workers=cfg["data"]["num_workers"])
        self.disc = self.opt_d = None
        if t["adv_weight"] > 0:
            disc = PatchDiscriminator(spatial_dims=ae["spatial_dims"], num_layers_d=t["disc_num_layers"],
                                      channels=t["disc_channels"], in_channels=ae["out_channels"], out_channels=1)
            check_discriminator_fits(disc, (t["batch_size"], ae["out_channels"], *self.train_set.crop),
                                     t["disc_num_layers"])
            opt_d = torch.optim.Adam(disc.parameters(), lr=t["disc_learning_rate"])
            self.disc, self.opt_d = self.accelerator.prepare(disc, opt_d)
            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.model, self.opt_g, self.train_loader, self.val_loader = self.accelerator.prepare(
            model, opt_g, train_loader, val_loader)
        if self.perceptual is not None:
            self.perceptual.to(self.accelerator.device)
        self.global_step, self.epoch, self.batches_done = 0, 0, 0

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> str:
        acc = self.accelerator
        final = os.path.join(self.run_dir, CHECKPOINTS, f"checkpoint-{self.global_step}")
        tmp = final + ".tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        save_state_folder(acc.save_state, tmp)
        if acc.is_main_process:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump({"global_step": self.global_step, "epoch": self.epoch,
                           "batches_done": self.batches_done}, f)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        folder = os.path.join(self.run_dir, CHECKPOINTS)
        steps = sorted(int(n.split("-")[1]) for n in os.listdir(folder)
                       if n.startswith("checkpoint-") and n.split("-")[1].isdigit())
        for step in steps[:-self.t["checkpoints_total_limit"]]:
            shutil.rmtree(os.path.join(folder, f"checkpoint-{step}"), ignore_errors=True)

    def load_checkpoint(self, path: str) -> None:
        self.accelerator.load_state(path)
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        self.global_step, self.epoch, self.batches_done = state["global_step"], state["epoch"], state["batches_done"]

    # ----------------------------------------------------------------- one step
    def _generator(self, *key: int) -> torch.Generator:
        """A generator seeded from (seed, *key): training noise that a resumed run reproduces exactly."""
        seed = int(np.random.SeedSequence([self.t["seed"], *key]).generate_state(1)[0])
        return torch.Generator(device=self.accelerator.device).manual_seed(seed)

    def _inputs(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        d = self.t["denoising"]
        if not d["enabled"]:
            return x
        return corrupt(x, d["noise_type"], d["noise_std"], d["dropout_prob"], generator=generator)

    def _generator_losses(self, target: torch.Tensor, recon: torch.Tensor, mu, logvar, adv_on: bool):
        t = self.t
        terms = self.recon_loss.terms(recon.float(), target.float())
        logs = {"recon_loss": sum(w * v for w, v in terms.values()).detach()}
        if len(terms) > 1 or "dice" in terms:
            logs.update({TERM_NAMES[k]: v.detach() for k, (_, v) in terms.items()})
        kl = kl_loss(mu.float(), logvar.float())
        total = t["kl_weight"] * kl
        logs["kl_loss"] = kl.detach()
        if self.perceptual is not None:
            perc = self.perceptual(recon.float(), target.float())
            logs["perceptual_loss"] = perc.detach()
        adv = None
        if adv_on:
            self.disc.requires_grad_(False)
            adv = self.adv_loss(self.disc(recon.contiguous().float())[-1], target_is_real=True,
                                for_discriminator=False)
            self.disc.requires_grad_(True)
            logs["adv_loss"] = adv.detach()
        adaptive = t["loss"]["weighting"] == "adaptive"
        last = self.accelerator.unwrap_model(self.model).last_layer_weight() if adaptive else None
        lambdas = {}
        ref_name = self.recon_loss.reference
        others = {k: v for k, (_, v) in terms.items() if k != ref_name}
        if adaptive and others:
            ref_w, ref = terms[ref_name]
            lambdas = adaptive_weights(ref_w * ref, others, last, t["loss"]["adaptive_max_weight"])
        nll = sum(w * lambdas.get(name, 1.0) * v for name, (w, v) in terms.items())
        if self.perceptual is not None:
            nll = nll + t["perceptual_weight"] * perc
        total = total + nll
        if adv is not None:
            if adaptive:  # taming: ||grad nll|| / (||grad L_adv|| + 1e-4) at the last layer, nll incl. perceptual
                lambdas.update(adaptive_weights(nll, {"adv": adv}, last, t["loss"]["adaptive_max_weight"]))
            total = total + t["adv_weight"] * lambdas.get("adv", 1.0) * adv
        logs.update({f"lambda_{k}": v for k, v in lambdas.items()})
        logs["total_loss"] = total.detach()
        return total, logs

    def train_step(self, batch: dict, adv_on: bool) -> dict:
        """One micro-batch: generator (and discriminator) forward/backward; optimizers step on sync.

        Input noise and the posterior sample draw from a generator keyed by (epoch, batch index).
        """
        acc = self.accelerator
        target = batch["image"]
        generator = self._generator(self.epoch, self.batches_done)
        with acc.accumulate(*(m for m in (self.model, self.disc) if m is not None)):
            recon, mu, logvar = self.model(self._inputs(target, generator), generator=generator)
            total, logs = self._generator_losses(target, recon, mu, logvar, adv_on)
            acc.backward(total)
            optimizers = [self.opt_g]
            if adv_on:
                fake = self.adv_loss(self.disc(recon.detach().contiguous().float())[-1], target_is_real=False,
                                     for_discriminator=True)
                real = self.adv_loss(self.disc(target.contiguous().float())[-1], target_is_real=True,
                                     for_discriminator=True)
                disc_loss = self.t["adv_weight"] * 0.5 * (fake + real)
                acc.backward(disc_loss)
                optimizers.append(self.opt_d)
                logs["disc_loss"] = disc_loss.detach()
            if acc.sync_gradients:
                step_optimizers([opt.optimizer for opt in optimizers], acc.scaler)
                for opt in optimizers:
                    opt.zero_grad()
        return {k: float(v) for k, v in logs.items()}

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Score every validation volume (each rank its share, batch by batch), gather the rows of all
        ranks, write ``eval/cases.csv`` and ``eval/metrics.json``; return the means over the volumes."""
        acc, model = self.accelerator, self.accelerator.unwrap_model(self.model)
        model.eval()
        val_generator = self._generator(2**31 - 1)  # not an epoch index
        limit = self.t["fast_dev_run_batches"] if self.t["fast_dev_run"] else None
        rows, panels = [], None
        for i, batch in enumerate(tqdm(self.val_loader, desc="validate", leave=False,
                                       disable=not acc.is_main_process)):
            if limit is not None and i >= limit:
                break
            target = batch["image"]
            inputs = self._inputs(target, val_generator)
            mu, logvar = model.encode(inputs)
            recon = model.decode(mu).float()
            rows.extend(self._case_rows(batch, recon, target.float(), mu.float(), logvar.float()))
            if panels is None:
                panels = reconstruction_panels(inputs[0], recon[0], target[0])
        model.train()
        rows = list({r["case"]: r for r in gather_object(rows)}.values())  # even_batches repeats a few cases
        metrics = mean_over_cases([{k: v for k, v in r.items() if not k.startswith("black_")} for r in rows])
        if acc.is_main_process:
            self._write_eval(rows, metrics)
            if panels is not None:
                self._log_images(*panels)
        return metrics

    def _case_rows(self, batch: dict, recon, target, mu, logvar) -> list[dict]:
        """One row per volume: losses, PSNR, foreground scores (and vs the masks), the all-black PSNR."""
        threshold, rows = self.recon_loss.threshold, []
        for j in range(target.shape[0]):
            case = self.val_set.case_id(int(batch["index"][j]))
            p, x = recon[j:j + 1], target[j:j + 1]
            row = {"case": case, "subject": case, "recon_loss": float(self.recon_loss(p, x)),
                   "l1": float((p - x).abs().mean()), "kl_loss": float(kl_loss(mu[j:j + 1], logvar[j:j + 1])),
                   "psnr": psnr(p, x), **foreground_scores(p, x > threshold, threshold)}
            if "mask" in batch:
                row.update(foreground_scores(p, batch["mask"][j:j + 1], threshold, prefix="mask_"))
            row["black_psnr"] = psnr(torch.zeros_like(x), x)
            rows.append(row)
        return rows

    def _write_eval(self, rows: list[dict], metrics: dict) -> None:
        black = {k: v for k, v in metrics.items() if k.startswith(("fg_", "mask_"))}
        black = {k: (None if v is None else 0.0) for k, v in black.items()}  # no predicted voxel: Dice 0, ratio 0
        black["psnr"] = mean_over_cases([{"psnr": r["black_psnr"]} for r in rows])["psnr"]
        folder = os.path.join(self.run_dir, EVAL_DIR)
        os.makedirs(folder, exist_ok=True)
        write_case_table(os.path.join(folder, "cases.csv"), rows)
        write_json_atomic(os.path.join(folder, "metrics.json"),
                          {**metrics, "num_volumes": len(rows), "step": self.global_step,
                           "threshold": self.recon_loss.threshold, "reference_black": black}, indent=2)

    def _log_images(self, panel: torch.Tensor, error: torch.Tensor) -> None:
        tag = "val/patch_denoising" if self.t["denoising"]["enabled"] else "val/patch_reconstruction"
        writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_images(tag, panel, self.global_step, dataformats="NCHW")
        writer.add_images(f"{tag}_error", error, self.global_step, dataformats="NCHW")
        folder = os.path.join(self.run_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        grid = torch.cat([panel[:, 0], error[:, 0]], dim=2).flatten(0, 1).numpy()
        mpl_image.imsave(os.path.join(folder, f"step_{self.global_step:07d}.png"), grid, cmap="gray", vmin=0, vmax=1)

    # ----------------------------------------------------------------- loop
    def _check_threshold(self, batch: dict) -> None:
        thr = self.recon_loss.threshold
        if self.accelerator.is_main_process and not bool((batch["image"] > thr).any()):
            print(f"warning: threshold {thr}: the first batch has no foreground voxel (target > {thr}); "
                  f"foreground weights and metrics see background only", file=sys.stderr)

    def _log(self, prefix: str, values: dict, step: int) -> None:
        self.accelerator.log({f"{prefix}{k}": v for k, v in values.items() if v is not None}, step=step)

    def train(self) -> dict:
        """Run to ``n_epochs`` or ``max_steps``; return the last validation metrics."""
        acc, t = self.accelerator, self.t
        claim_run_dir(self.run_dir, flatten(self.cfg), resuming=bool(t["resume_from_checkpoint"]))
        if acc.is_main_process:
            write_config(self.run_dir, flatten(self.cfg))
        acc.init_trackers("tensorboard", config={k: v for k, v in flatten(self.cfg).items()
                                                 if isinstance(v, (int, float, str, bool))})
        if self.resume_from:
            self.load_checkpoint(self.resume_from)
            acc.print(f"resumed from {self.resume_from} at step {self.global_step}")
        truncate_metrics(self.run_dir, STEP_METRICS, "step", self.global_step + 1)
        truncate_metrics(self.run_dir, EPOCH_METRICS, "epoch", self.epoch)
        log = MetricsLog(self.run_dir)
        max_steps, limit = t["max_steps"], (t["fast_dev_run_batches"] if t["fast_dev_run"] else None)
        val_metrics, last_val_step, last_save_step, checked = {}, -1, -1, False
        done = max_steps and self.global_step >= max_steps
        while not done and self.epoch < t["n_epochs"]:
            epoch, adv_on = self.epoch, self.disc is not None and self.epoch >= t["autoencoder_warm_up_n_epochs"]
            self.train_loader.set_epoch(epoch)
            loader = (acc.skip_first_batches(self.train_loader, self.batches_done) if self.batches_done
                      else self.train_loader)
            n_batches = min(len(self.train_loader), limit or len(self.train_loader))
            sums, count = {}, 0
            bar = tqdm(total=n_batches, initial=self.batches_done, desc=f"epoch {epoch}",
                       disable=not acc.is_main_process)
            for batch in loader:
                if self.batches_done >= n_batches:
                    break
                if not checked:
                    self._check_threshold(batch)
                    checked = True
                logs = self.train_step(batch, adv_on)
                self.batches_done += 1
                bar.update(1)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if acc.sync_gradients:
                    self.global_step += 1
                    log.log_step(self.global_step, {"epoch": epoch, **logs})
                    self._log("train/step/", logs, self.global_step)
                    bar.set_postfix(step=self.global_step, recon=f"{logs['recon_loss']:.4f}")
                    if max_steps and self.global_step >= max_steps:
                        done = True
                        break
            bar.close()
            epoch_end = self.batches_done >= n_batches
            if epoch_end:
                self.epoch, self.batches_done = epoch + 1, 0
            record = {f"train_{k}": v / count for k, v in sums.items()} if count else {}
            last_epoch = self.epoch >= t["n_epochs"]
            if epoch_end and ((epoch + 1) % t["val_interval"] == 0 or last_epoch or done):
                val_metrics, last_val_step = self.validate(), self.global_step
                record.update({f"val_{k}": v for k, v in val_metrics.items()})
                self._log("val/", val_metrics, self.global_step)
            if record:
                log.log_epoch(epoch, {"step": self.global_step, **record})
                self._log("train/epoch/", {k[6:]: v for k, v in record.items() if k.startswith("train_")},
                          self.global_step)
            if epoch_end and (epoch + 1) % t["save_interval"] == 0:
                self.save_checkpoint()
                last_save_step = self.global_step
        return self._finish(log, val_metrics, last_val_step, last_save_step)

    def _finish(self, log: MetricsLog, val_metrics: dict, last_val_step: int, last_save_step: int) -> dict:
        acc = self.accelerator
        if last_val_step != self.global_step:
            val_metrics = self.validate()
            self._log("val/", val_metrics, self.global_step)
            log.log_epoch(self.epoch, {"step": self.global_step, **{f"val_{k}": v for k, v in val_metrics.items()}})
        if last_save_step != self.global_step:
            self.save_checkpoint()
        model = acc.unwrap_model(self.model)
        model.eval()
        batches = [b["image"] for _, b in zip(range(SCALING_BATCHES), self.train_loader)]
        model.scaling_factor = measure_scaling_factor(model, batches)
        model.train()
        if acc.is_main_process:
            path = save_autoencoder(model, self.run_dir)
            summary = {"step": self.global_step, "scaling_factor": model.scaling_factor, "model_path": path,
                       **{f"val_{k}": v for k, v in val_metrics.items()}}
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in summary.items()}, f, indent=2)
        acc.end_training()
        return val_metrics
