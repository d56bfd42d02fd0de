"""Validation over the whole validation split, after every epoch and at the end of every run.

Per batch, with noise from a generator seeded by ``seed`` (the same every time, so records compare):

1. losses: ``t`` uniform over the diffusion steps, the training objective's ``L_seg``, ``L_cls``,
   ``L_total`` (means over the split);
2. the image pass (``heads.image_heads``): the calibration map (``sigmoid > 0.5``) and, with the
   classification head, the slice HGG probability;
3. the segmentation the model samples: ``num_ensemble`` DDIM samples per slice (the sampling
   diffusion's respacing), fused by their mean (``sampling.fuse_mean``).

Scores (``plugins/segdiff/scoring.py``): ``dice``/``iou`` are the samples' volume Dice/IoU (mean
over subjects; the primary score), ``dice_slice``/``iou_slice`` over slices with tumour in truth or
prediction, ``calib_*`` the same for the calibration head; ``auc``/``f1``/``acc`` per subject
(binary, HGG positive) and ``*_slice`` per slice. ``sigma_seg``, ``sigma_cls`` (exp of the
log-sigmas) and ``alpha_LGG``, ``alpha_HGG`` complete the record; ``weights`` says which were
scored (``raw``: the trained parameters, not the EMA).

:class:`EpochValidation` is the epoch callback (every ``interval``-th epoch, none when 0; rank 0
computes, prints one line, appends to ``metrics_epoch.jsonl``, writes TensorBoard ``epoch/<name>``);
its :meth:`~EpochValidation.final` runs at the end of a run, whatever the epoch boundary: a row
marked ``"final": true`` (the last epoch's record when it was taken at the same step), and
``validation/metrics.json`` with ``validation/cases.csv`` (one row per validation subject), with the
FLAIR-thresholding reference (``reference_flair``, threshold fitted on the training split) beside
the model's scores.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from tqdm import tqdm

from plugins.common.run_log import CASES_FILE, MetricsLog, is_main_process, write_case_table, write_json_atomic
from plugins.segdiff.heads import sigmas
from plugins.segdiff.sampling import fuse_mean, sample_ensemble
from plugins.segdiff.scoring import SAMPLE, FlairThreshold, SplitScores

EPOCH_KEYS = ("dice", "iou", "auc", "f1", "acc", "L_seg", "L_cls", "L_total", "sigma_seg", "sigma_cls",
              "alpha_LGG", "alpha_HGG", "dice_slice", "iou_slice", "calib_dice", "calib_iou", "calib_dice_slice",
              "calib_iou_slice", "auc_slice", "f1_slice", "acc_slice")
VALIDATION_DIR = "validation"


class _Mean:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, values: torch.Tensor):
        self.total += float(values.detach().double().sum())
        self.count += values.numel()

    def value(self):
        return self.total / self.count if self.count else None


@torch.no_grad()
def validate(model, diffusion, sample_diffusion, objective, loader, batch_fn, num_ensemble: int = 3, seed: int = 0,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """(the record of the module docstring, one case row per subject) of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    scores = SplitScores()
    means = {k: _Mean() for k in ("L_seg", "L_cls", "L_total")}
    try:
        for batch in tqdm(loader, desc="validation", unit="batch", disable=not progress, leave=False):
            x_start, kwargs = batch_fn(batch)
            x_start = x_start.to(device)
            kwargs = {k: v.to(device) for k, v in kwargs.items()}
            n = x_start.shape[0]
            t = torch.randint(0, diffusion.num_timesteps, (n,), generator=gen).to(device)
            noise = torch.randn(x_start.shape, generator=gen).to(device)
            terms = diffusion.training_losses(model, x_start, t, model_kwargs=kwargs, noise=noise)
            means["L_seg"].add(terms["L_seg"])
            means["L_total"].add(terms["loss"])
            if "L_cls" in terms:
                means["L_cls"].add(terms["L_cls"])
            out = sample_ensemble(model, sample_diffusion, kwargs["concat"], num_ensemble, True, gen)
            preds = {SAMPLE: fuse_mean(out["samples"]), "calib": out["calib"]}
            scores.add_batch(batch["subject"], batch["grade"], preds, batch["seg"] > 0.5, out["hgg_prob"])
    finally:
        model.train(was_training)
    cases, record = scores.result()
    record.update({k: m.value() for k, m in means.items()})
    record.update(sigmas(model))
    if objective.alpha is not None:
        record.update(alpha_LGG=float(objective.alpha[0]), alpha_HGG=float(objective.alpha[1]))
    extra = {k: v for k, v in record.items() if k not in EPOCH_KEYS}
    return {**{k: record.get(k) for k in EPOCH_KEYS}, **extra, "weights": "raw"}, cases


def score_reference(reference: FlairThreshold, loader) -> tuple[dict, list[dict]]:
    """(metrics, case rows) of a fitted FLAIR threshold over ``loader``: ``reference_flair`` (volume Dice) etc."""
    scores = SplitScores()
    for batch in loader:
        scores.add_batch(batch["subject"], batch["grade"], {"reference_flair": reference.predict(batch["image"])},
                         batch["seg"] > 0.5)
    cases, metrics = scores.result()
    return metrics, cases


def format_epoch(epoch, record: dict) -> str:
    """``epoch 3 | dice 0.1234 | iou ... | auc n/a | ...`` (the numeric keys of ``EPOCH_KEYS``; None -> n/a)."""
    parts = [f"{k} {'n/a' if record.get(k) is None else format(record[k], '.4f')}" for k in EPOCH_KEYS]
    return f"epoch {epoch} | " + " | ".join(parts)


class EpochValidation:
    """``cb(loop, epoch)``: validate on rank 0 after epochs ``interval - 1, 2 interval - 1, ...``, print, log;
    :meth:`final` at the end of the run."""

    def __init__(self, run_dir: str, diffusion, sample_diffusion, objective, loader, batch_fn, *,
                 num_ensemble: int = 3, seed: int = 0, interval: int = 1, reference: FlairThreshold | None = None,
                 reference_loader=None, log=print):
        self.run_dir = run_dir
        self.diffusion, self.sample_diffusion, self.objective = diffusion, sample_diffusion, objective
        self.loader, self.batch_fn = loader, batch_fn
        self.num_ensemble, self.seed, self.interval = num_ensemble, seed, interval
        self.reference, self.reference_loader = reference, reference_loader
        self.log = log
        self.metrics = MetricsLog(run_dir)
        self.last = None  # (step, record, cases) of the latest epoch
        self._writer = None

    def _validate(self, loop):
        return validate(loop.model, self.diffusion, self.sample_diffusion, self.objective, self.loader,
                        self.batch_fn, self.num_ensemble, self.seed)

    def _tensorboard(self, record: dict, epoch: int) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(os.path.join(self.run_dir, "tb"))
        for key, value in record.items():
            if isinstance(value, (int, float)) and value is not None:
                self._writer.add_scalar(f"epoch/{key}", value, epoch)
        self._writer.flush()

    def __call__(self, loop, epoch: int) -> None:
        if not self.interval or (epoch + 1) % self.interval:
            return
        if is_main_process():
            record, cases = self._validate(loop)
            step = loop.step + loop.resume_step
            self.last = (step, record, cases)
            self.log(format_epoch(epoch, record))
            self.metrics.log_epoch(epoch, {"step": step, **record})
            self._tensorboard(record, epoch)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def final(self, loop) -> dict | None:
        """End-of-run validation (rank 0; every rank waits): the final row, ``validation/metrics.json`` and
        ``validation/cases.csv``; returns the metrics (None on other ranks)."""
        metrics = None
        if is_main_process():
            step = loop.step + loop.resume_step
            if self.last is not None and self.last[0] == step:  # the last epoch ended at this very step
                epoch, (_, record, cases) = loop.epoch - 1, self.last
            else:
                epoch, (record, cases) = loop.epoch, self._validate(loop)
            self.log("final " + format_epoch(epoch, record))
            self.metrics.log_epoch(epoch, {"step": step, "final": True, **record})
            metrics = {"step": step, "subjects": len(cases), "num_ensemble": self.num_ensemble,
                       "sampling_steps": self.sample_diffusion.num_timesteps, "sampler": "ddim", **record}
            if self.reference is not None:
                metrics["reference_flair_threshold"] = self.reference.fit(self.reference_loader)
                ref_metrics, ref_cases = score_reference(self.reference, self.loader)
                metrics.update(ref_metrics)
                by_case = {row["case"]: row for row in ref_cases}
                cases = [{**row, **{k: v for k, v in by_case[row["case"]].items() if k.startswith("reference")}}
                         for row in cases]
            out = os.path.join(self.run_dir, VALIDATION_DIR)
            os.makedirs(out, exist_ok=True)
            write_case_table(os.path.join(out, CASES_FILE), cases)
            write_json_atomic(os.path.join(out, "metrics.json"), metrics, indent=2)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return metrics
