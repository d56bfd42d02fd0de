"""Segmentation-diffusion evaluation: ensemble sampling, mean/STAPLE fusion, Dice/IoU, grades, one output format.

The network is rebuilt from the run's ``config.json`` (flags given explicitly must agree with it).
Subjects: the first ``--num_eval_cases`` validation subjects of the run's ``split.json`` (every
subject folder of the data without one; 0 = all). Every slice gets ``E = --num_ensemble`` sampled
masks (:func:`plugins.segdiff.sampling.sample_ensemble`), fused per subject by the ensemble mean
and by STAPLE over the whole volume. Dice and IoU are scored per slice and per volume (the pixels
of a subject's slices pooled); a subject's HGG probability is the mean over its slices, called HGG
at ``>= 0.5`` for the subject accuracy. Outputs in ``--out_dir`` (default ``<run>/eval_<checkpoint>``):
``per_slice.csv``, ``per_volume.csv``, ``grid.png`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from patches.guided_diffusion import DIFFUSION_DEFAULTS, create_seam_diffusion, load_model_weights
from plugins.common.errors import InputError
from plugins.common.flags import EVAL_DEFAULTS
from plugins.common.run_log import CONFIG_FILE, read_config, write_json_atomic
from plugins.data import BratsSliceDataset, read_grade_csv, settings_from_args
from plugins.data.splits import SPLIT_FILE
from plugins.segdiff.plugin import DATA_NAMES, SEGDIFF_ARCHITECTURE_KEYS, segdiff_model_for_config
from plugins.segdiff.sampling import dice_iou, fuse_mean, fuse_staple, sample_ensemble
from plugins.segdiff.validation import auc_or_none
from plugins.slice_diffusion.training import MODEL_FLAGS

#: Flags of the saved run that decide the network and its input; given here, they must agree.
CONFIG_KEYS = (tuple(MODEL_FLAGS) + tuple(k for k in DIFFUSION_DEFAULTS if k != "timestep_respacing")
               + ("modalities", "crop", "value_range") + SEGDIFF_ARCHITECTURE_KEYS)

SAMPLE_DEFAULTS = dict(
    **EVAL_DEFAULTS,
    csv_path="",
    data_name="BRATS",
    num_ensemble=5,
    timestep_respacing="",
    num_eval_cases=20,
    batch_size=4,
    seed=0,
    cache_dir="",
    num_grid_slices=4,
    **{k: v for k, v in {**MODEL_FLAGS, **DIFFUSION_DEFAULTS, "modalities": "t1,t1ce,t2,flair", "crop": 0,
                         "value_range": "-1,1", "use_cls_head": True, "calib_width": 32}.items()
       if k in CONFIG_KEYS},
)


def run_dir_of(model_path: str) -> str:
    """The checkpoint's folder: its run, holding ``config.json`` and ``split.json``."""
    return os.path.dirname(os.path.abspath(model_path))


def load_config(args, given: set) -> dict:
    """The run's config.json, checked against the explicitly given flags; refusals name the flag."""
    if not os.path.isfile(args.model_path):
        raise InputError(f"--model_path: {args.model_path!r} is not a checkpoint file")
    run_dir = run_dir_of(args.model_path)
    if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        raise InputError(f"{os.path.join(run_dir, CONFIG_FILE)}: missing; the checkpoint's run configuration is needed")
    config = read_config(run_dir)
    absent = [k for k in CONFIG_KEYS if k not in config]
    if absent:
        raise InputError(f"{os.path.join(run_dir, CONFIG_FILE)}: not a segmentation-diffusion run "
                         f"(missing {', '.join(absent)})")
    differ = [f"--{k} {getattr(args, k)!r} (the checkpoint has {config[k]!r})" for k in CONFIG_KEYS
              if k in given and getattr(args, k) != config[k]]
    if differ:
        raise InputError(f"{args.model_path}: flags disagree with the checkpoint's config: {'; '.join(differ)}")
    return config


def check_args(args) -> None:
    """Refuse an unknown ``--data_name``, a non-positive ``--num_ensemble`` or ``--batch_size``, a negative
    ``--num_eval_cases``."""
    if args.data_name.upper() not in DATA_NAMES:
        raise InputError(f"--data_name {args.data_name!r}: expected one of {', '.join(DATA_NAMES)}")
    for key in ("num_ensemble", "batch_size"):
        if getattr(args, key) <= 0:
            raise InputError(f"--{key}: got {getattr(args, key)}; expected a positive integer")
    if args.num_eval_cases < 0:
        raise InputError(f"--num_eval_cases: got {args.num_eval_cases}; expected >= 0 (0 = all)")


def build(args, config):
    """(model, diffusion, use_ddim, data settings), the model on the best device with its weights loaded
    (mismatched keys are named)."""
    settings = settings_from_args(argparse.Namespace(**config))
    model = segdiff_model_for_config(config, len(settings.modalities))
    load_model_weights(model, args.model_path)
    respacing = args.timestep_respacing
    try:
        diffusion = create_seam_diffusion(**{**{k: config[k] for k in DIFFUSION_DEFAULTS if k in config},
                                             "timestep_respacing": respacing})
    except ValueError as err:
        raise InputError(f"--timestep_respacing {respacing!r}: {err}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), diffusion, respacing.startswith("ddim"), settings


def eval_subjects(args, data_dir: str) -> list[str]:
    """The first ``--num_eval_cases`` (0 = all) validation subjects of the run, else of ``data_dir``'s folders."""
    split_path = os.path.join(run_dir_of(args.model_path), SPLIT_FILE)
    if os.path.isfile(split_path):
        with open(split_path) as f:
            subjects = json.load(f)["val"]
    else:
        subjects = sorted(n for n in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, n)))
    return subjects[: args.num_eval_cases] if args.num_eval_cases else subjects


@dataclass
class SubjectSamples:
    """One subject's sampled slices, Z of them in loader order."""

    samples: list = field(default_factory=list)  # Z x [E, 1, S, S] in [-1, 1]
    gt: list = field(default_factory=list)       # Z x [1, S, S] bool
    image: list = field(default_factory=list)    # Z x [S, S], the last modality
    z: list = field(default_factory=list)        # Z slice indices
    grade: list = field(default_factory=list)    # Z x (0 LGG, 1 HGG, -1 no grade)
    hgg: list = field(default_factory=list)      # Z HGG probabilities; empty without a classification head


def collect_samples(model, diffusion, dataset, args, use_ddim: bool) -> tuple[dict, float]:
    """``({subject: SubjectSamples}, seconds spent sampling)``: ``--num_ensemble`` masks for every slice.

    ``--seed`` seeds x_T and torch's global generator, which upstream's ancestral steps draw from.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = next(model.parameters()).device
    per_subject: dict = {}
    start = time.perf_counter()
    for batch in tqdm(loader, desc="sampling", unit="batch"):
        out = sample_ensemble(model, diffusion, batch["image"].to(device), args.num_ensemble, use_ddim, gen)
        for i, subject in enumerate(batch["subject"]):
            rec = per_subject.setdefault(subject, SubjectSamples())
            rec.samples.append(out["samples"][i])
            rec.gt.append(batch["seg"][i] > 0.5)
            rec.image.append(batch["image"][i, -1])
            rec.z.append(int(batch["slice_index"][i]))
            rec.grade.append(int(batch["grade"][i]))
            if out["hgg_prob"] is not None:
                rec.hgg.append(float(out["hgg_prob"][i]))
    return per_subject, time.perf_counter() - start


def _dice_iou_columns(fused: dict, gt: torch.Tensor) -> dict:
    """``{"dice_<fusion>": [N], "iou_<fusion>": [N], ...}`` of each fused mask [N, ...] against ``gt`` [N, ...]."""
    columns = {}
    for fusion, pred in fused.items():
        columns[f"dice_{fusion}"], columns[f"iou_{fusion}"] = dice_iou(pred, gt)
    return columns


def score_subject(subject: str, rec: SubjectSamples) -> tuple[list[dict], dict, dict]:
    """(per-slice rows, the per-volume row, the grid row of its slice with the most tumour) of one subject.

    Fusions, [Z, 1, S, S] bool: ``mean`` thresholds the mean of the E samples, ``staple`` runs STAPLE
    over the E sampled volumes; the volume scores pool the Z slices' pixels.
    """
    samples = torch.stack(rec.samples)  # [Z, E, 1, S, S]
    gt = torch.stack(rec.gt)  # [Z, 1, S, S]
    mean = fuse_mean(samples)
    staple = torch.from_numpy(fuse_staple(samples[:, :, 0].transpose(0, 1).numpy() > 0,
                                          mean[:, 0].numpy()))[:, None]
    fused = {"mean": mean, "staple": staple}
    per_slice = _dice_iou_columns(fused, gt)
    per_volume = _dice_iou_columns({k: v.flatten()[None] for k, v in fused.items()}, gt.flatten()[None])
    slice_rows = [{"subject": subject, "slice_index": z, "tumour_pixels": int(gt[k].sum()),
                   **{c: float(v[k]) for c, v in per_slice.items()},
                   "hgg_prob": rec.hgg[k] if rec.hgg else None} for k, z in enumerate(rec.z)]
    volume_row = {"subject": subject, "grade": rec.grade[0], "slices": len(rec.z),
                  **{c: float(v[0]) for c, v in per_volume.items()},
                  "hgg_prob": float(np.mean(rec.hgg)) if rec.hgg else None}
    k = int(gt.flatten(1).sum(1).argmax())
    grid_row = {"subject": subject, "z": rec.z[k], "image": rec.image[k].numpy(), "gt": gt[k, 0].numpy(),
                "samples": [s[0].numpy() for s in samples[k]], "mean": mean[k, 0].numpy(),
                "staple": staple[k, 0].numpy()}
    return slice_rows, volume_row, grid_row


def aggregate_metrics(slices: pd.DataFrame, volumes: pd.DataFrame) -> dict:
    """``slice_<dice|iou>_<fusion>`` and ``volume_...``: column means; over the subjects with a grade and an
    HGG probability, ``subject_acc`` (HGG called at ``hgg_prob >= 0.5``) and ``subject_auc`` (None with one grade)."""
    metrics = {}
    for fusion in ("mean", "staple"):
        for what in ("dice", "iou"):
            metrics[f"slice_{what}_{fusion}"] = float(slices[f"{what}_{fusion}"].mean())
            metrics[f"volume_{what}_{fusion}"] = float(volumes[f"{what}_{fusion}"].mean())
    graded = volumes[(volumes["grade"] >= 0) & volumes["hgg_prob"].notna()]
    if len(graded):
        pred = (graded["hgg_prob"] >= 0.5).astype(int)
        metrics["subject_acc"] = float((pred == graded["grade"]).mean())
        metrics["subject_auc"] = auc_or_none(torch.tensor(graded["hgg_prob"].values, dtype=torch.float32),
                                             torch.tensor(graded["grade"].values), "subject-level AUC")
    return metrics


def save_grid(path, rows: list[dict], num_ensemble: int) -> None:
    """PNG: one row per slice: image, ground truth, the E samples, mean fusion, STAPLE fusion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["image", "ground truth"] + [f"sample {i + 1}" for i in range(num_ensemble)] + ["mean", "STAPLE"]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.6 * len(titles), 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        panels = [row["image"], row["gt"], *row["samples"], row["mean"], row["staple"]]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, cmap="gray")
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=7)
        axes[r, 0].text(0, -0.04, f"{row['subject']} z={row['z']}", fontsize=6, va="top",
                        transform=axes[r, 0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out_dir: str, slices: pd.DataFrame, volumes: pd.DataFrame, grid: list[dict], metrics: dict,
                  num_grid_slices: int, num_ensemble: int) -> None:
    """``per_slice.csv``, ``per_volume.csv``, ``grid.png`` (the ``num_grid_slices`` rows with the most tumour,
    at least one) and ``metrics.json`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    slices.to_csv(os.path.join(out_dir, "per_slice.csv"), index=False)
    volumes.to_csv(os.path.join(out_dir, "per_volume.csv"), index=False)
    rows = sorted(grid, key=lambda row: -row["gt"].sum())[: max(1, num_grid_slices)]
    save_grid(os.path.join(out_dir, "grid.png"), rows, num_ensemble)
    write_json_atomic(os.path.join(out_dir, "metrics.json"), metrics, indent=2)


def evaluate(args, given: set) -> dict:
    """Check the flags against the run, sample and score its evaluation subjects, write the outputs; the metrics.

    ``given``: the names of the flags given explicitly (they must agree with the run's config).
    """
    check_args(args)
    config = load_config(args, given)
    data_dir = args.data_dir or config.get("data_dir", "")
    if not os.path.isdir(data_dir):
        raise InputError(f"--data_dir: {data_dir!r} is not a folder of BraTS subjects")
    model, diffusion, use_ddim, settings = build(args, config)
    csv_path = args.csv_path or config.get("csv_path", "")
    subjects = eval_subjects(args, data_dir)
    grades = read_grade_csv(csv_path, subjects) if csv_path else None
    dataset = BratsSliceDataset(data_dir, subjects, grades, settings, args.cache_dir)
    per_subject, elapsed = collect_samples(model, diffusion, dataset, args, use_ddim)
    scored = [score_subject(subject, rec) for subject, rec in per_subject.items()]
    slices = pd.DataFrame([row for slice_rows, _, _ in scored for row in slice_rows])
    volumes = pd.DataFrame([volume_row for _, volume_row, _ in scored])
    metrics = {"checkpoint": os.path.basename(args.model_path), "subjects": len(volumes), "slices": len(slices),
               "num_ensemble": args.num_ensemble, "timestep_respacing": args.timestep_respacing,
               "sampling_steps": diffusion.num_timesteps, "sampler": "ddim" if use_ddim else "ancestral",
               "slices_per_second": len(slices) / elapsed, **aggregate_metrics(slices, volumes)}
    out_dir = args.out_dir or os.path.join(run_dir_of(args.model_path),
                                           "eval_" + os.path.splitext(os.path.basename(args.model_path))[0])
    write_outputs(out_dir, slices, volumes, [grid_row for _, _, grid_row in scored], metrics,
                  args.num_grid_slices, args.num_ensemble)
    return metrics
