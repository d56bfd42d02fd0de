"""Segmentation-diffusion evaluation: ensemble sampling, mean/STAPLE fusion, Dice/IoU, grades, one output format.

The network is rebuilt from the run's ``config.json`` (flags given explicitly must agree with it).
Subjects: the first ``--num_eval_cases`` validation subjects of the run's ``split.json`` (every
subject folder of the data without one; 0 = all). Every slice gets ``E = --num_ensemble`` sampled
masks (:func:`plugins.segdiff.sampling.sample_ensemble`), fused by the ensemble mean per slice
and by STAPLE over the whole volume; the calibration head and the HGG probability come from the
image pass. Scores as in ``plugins/segdiff/scoring.py``: volume Dice/IoU per subject (primary),
slice means over slices with tumour, classification per subject and per slice, and the
FLAIR-thresholding reference ``reference_flair`` (threshold fitted on the run's training
subjects). Outputs in ``--out_dir`` (default ``<run>/eval_<checkpoint>``): ``metrics.json``,
``cases.csv`` (one row per subject) and ``grid.png``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from patches.guided_diffusion import DIFFUSION_DEFAULTS, create_seam_diffusion, load_model_weights
from plugins.common.errors import InputError
from plugins.common.flags import EVAL_DEFAULTS, EVAL_HELP
from plugins.common.run_log import CASES_FILE, CONFIG_FILE, read_config, write_case_table, write_json_atomic
from plugins.data import BratsSliceDataset, read_grade_csv, settings_from_args
from plugins.data.splits import run_split
from plugins.segdiff.plugin import DATA_NAMES, SEGDIFF_ARCHITECTURE_KEYS, SEGDIFF_HELP, segdiff_model_for_config
from plugins.segdiff.sampling import fuse_mean, fuse_staple, sample_ensemble
from plugins.segdiff.scoring import SAMPLE, FlairThreshold, SplitScores
from plugins.slice_diffusion.training import MODEL_FLAGS, TRAINING_HELP

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
#: One phrase per flag of ``SAMPLE_DEFAULTS``; the model flags must agree with the run's config.json.
SAMPLE_HELP = {**TRAINING_HELP, **EVAL_HELP, **SEGDIFF_HELP, "batch_size": "slices per sampling batch",
               "seed": "seed of the sampling noise"}


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
    split = run_split(run_dir_of(args.model_path))
    if split is not None:
        subjects = split["val"]
    else:
        subjects = sorted(n for n in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, n)))
    return subjects[: args.num_eval_cases] if args.num_eval_cases else subjects


@dataclass
class SubjectVolume:
    """One subject's sampled masks (for STAPLE) and its slice with the most tumour (for the grid)."""

    masks: list = field(default_factory=list)  # Z x [E, S, S] bool
    truth: list = field(default_factory=list)  # Z x [1, S, S] bool
    grade: int = -1
    best: dict | None = None                   # the grid row of the slice with the most tumour


def collect(model, diffusion, dataset, args, use_ddim: bool, reference: FlairThreshold | None) -> tuple:
    """``(SplitScores, {subject: SubjectVolume}, seconds spent sampling)`` over ``dataset``.

    ``--num_ensemble`` masks per slice, fused by their mean; the calibration map and the HGG probability of
    the image pass; FLAIR thresholding when ``reference`` is fitted. ``--seed`` seeds x_T and torch's global
    generator, which upstream's ancestral steps draw from.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = next(model.parameters()).device
    scores, volumes, elapsed = SplitScores(), {}, 0.0
    for batch in tqdm(loader, desc="sampling", unit="batch"):
        start = time.perf_counter()
        out = sample_ensemble(model, diffusion, batch["image"].to(device), args.num_ensemble, use_ddim, gen)
        elapsed += time.perf_counter() - start
        truth = batch["seg"] > 0.5
        mean = fuse_mean(out["samples"])
        preds = {SAMPLE: mean, "calib": out["calib"]}
        if reference is not None:
            preds["reference_flair"] = reference.predict(batch["image"])
        scores.add_batch(batch["subject"], batch["grade"], preds, truth, out["hgg_prob"])
        for i, subject in enumerate(batch["subject"]):
            vol = volumes.setdefault(subject, SubjectVolume(grade=int(batch["grade"][i])))
            vol.masks.append(out["masks"][i, :, 0].numpy())
            vol.truth.append(truth[i])
            tumour = int(truth[i].sum())
            if vol.best is None or tumour > vol.best["tumour"]:
                vol.best = {"subject": subject, "z": int(batch["slice_index"][i]), "k": len(vol.truth) - 1,
                            "tumour": tumour, "image": batch["image"][i, -1].numpy(), "gt": truth[i, 0].numpy(),
                            "samples": [m[0].numpy() for m in out["samples"][i]], "mean": mean[i, 0].numpy(),
                            "calib": out["calib"][i, 0].numpy()}
    return scores, volumes, elapsed


def add_staple(scores: SplitScores, volumes: dict) -> None:
    """Score STAPLE over each subject's E sampled volumes (source ``staple``); adds its panel to the grid rows."""
    for subject, vol in volumes.items():
        masks = np.stack(vol.masks, 1)  # [E, Z, S, S]
        fallback = masks.mean(0) >= 0.5
        staple = torch.from_numpy(fuse_staple(masks, fallback))[:, None]
        scores.add_batch([subject] * len(vol.truth), [vol.grade] * len(vol.truth), {"staple": staple},
                         torch.stack(vol.truth))
        vol.best["staple"] = staple[vol.best["k"], 0].numpy()


def fit_reference(args, config: dict, data_dir: str, settings) -> FlairThreshold | None:
    """FLAIR thresholding fitted on the run's training subjects (``split.json``); None without FLAIR or a split."""
    split = run_split(run_dir_of(args.model_path))
    if "flair" not in settings.modalities or split is None:
        return None
    train = split["train"]
    reference = FlairThreshold(settings.modalities.index("flair"), settings.value_range)
    dataset = BratsSliceDataset(data_dir, train, None, settings, args.cache_dir)
    reference.fit(torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False))
    return reference


def save_grid(path, rows: list[dict], num_ensemble: int) -> None:
    """PNG: one row per slice: image, ground truth, the E samples, mean fusion, STAPLE fusion, calibration map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = (["image", "ground truth"] + [f"sample {i + 1}" for i in range(num_ensemble)]
              + ["mean", "STAPLE", "calibration"])
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(1.6 * len(titles), 1.7 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        panels = [row["image"], row["gt"], *row["samples"], row["mean"], row["staple"], row["calib"]]
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


def write_outputs(out_dir: str, cases: list[dict], grid: list[dict], metrics: dict, num_grid_slices: int,
                  num_ensemble: int) -> None:
    """``cases.csv`` (one row per subject), ``grid.png`` (the ``num_grid_slices`` subjects' slices with the most
    tumour, at least one) and ``metrics.json`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    write_case_table(os.path.join(out_dir, CASES_FILE), cases)
    rows = sorted(grid, key=lambda row: -row["tumour"])[: max(1, num_grid_slices)]
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
    reference = fit_reference(args, config, data_dir, settings)
    scores, volumes, elapsed = collect(model, diffusion, dataset, args, use_ddim, reference)
    add_staple(scores, volumes)
    cases, scored = scores.result()
    weights = "ema" if os.path.basename(args.model_path).startswith("ema") else "raw"
    metrics = {"checkpoint": os.path.basename(args.model_path), "weights": weights, "subjects": len(cases),
               "slices": len(dataset), "num_ensemble": args.num_ensemble,
               "timestep_respacing": args.timestep_respacing, "sampling_steps": diffusion.num_timesteps,
               "sampler": "ddim" if use_ddim else "ancestral", "slices_per_second": len(dataset) / elapsed,
               **scored, "reference_flair_threshold": reference.threshold if reference else None}
    out_dir = args.out_dir or os.path.join(run_dir_of(args.model_path),
                                           "eval_" + os.path.splitext(os.path.basename(args.model_path))[0])
    write_outputs(out_dir, cases, [vol.best for vol in volumes.values()], metrics, args.num_grid_slices,
                  args.num_ensemble)
    return metrics
