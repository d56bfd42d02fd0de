"""FPDM evaluation as AnoFPDM evaluates it, with the FLAIR-thresholding and random references.

The run's validation subjects (``split.json``) are halved by subject (sorted, shuffled by the split's
own seed, 0 when the split file names none; not by ``--seed``, so every seed of every arm trained on one
split is scored on the same test subjects): the first half tunes, the second is the test set. ``w`` is
fixed (AnoFPDM's BraTS value 2); tuning uses slice labels only, never pixel labels: ``M_max`` per modality (largest
``M_te`` over the tuning unhealthy slices), the image-level cut :func:`~plugins.bea.fpdm.tune_sim_cut`,
and the FLAIR reference's threshold (the ``flair_quantile`` of FLAIR inside the brain of the
tuning healthy slices).

Scoring (AnoFPDM's ``evaluate``): the brain is ``mean_c(x) > lo + 0.025 (hi - lo)`` over all
modalities of the slice (AnoFPDM: ``> -0.95`` in [-1, 1]). Pixel AUPRC (average precision) and
AUROC pool the brain pixels of the subset's slices. Masks are ``H >= threshold`` inside the
brain, then components (8-connected) of at most ``min_component`` pixels at 128 px (filled area;
AnoFPDM 40; scaled by ``(image_size / 128)^2`` for other sizes) are removed (the map's median filter,
AnoFPDM's 5 x 5 at 128 px, is scaled by ``image_size / 128`` to the nearest odd side,
:func:`scaled_median_size`); Dice ``(2|P∩G| + 1e-6) / (|P| + |G| + 1e-6)`` and IoU are per slice, then
averaged.
"mixed" = every test slice, masks gated by the image call (a healthy call has an empty mask);
"unhealthy" = the slices holding tumour, ungated masks. The FLAIR reference scores the FLAIR
intensity as the map (same brain, same metrics; a slice is called unhealthy when its filtered
mask is not empty); the random map's AUPRC is the lesion prevalence inside the brain of the test
slices (``reference_random_auprc``, one number, to compare with "mixed"); the trivial image-level
reference is the accuracy of calling every test slice healthy (``reference_all_healthy_accuracy``, the
healthy share of the test slices).

Each difference from AnoFPDM's evaluation is a row of the table in :mod:`plugins.bea.fpdm`.

Outputs: ``metrics.json`` (keys ``protocol``, ``metrics``, ``reference_flair``, ``reference_random_auprc``,
``reference_all_healthy_accuracy``, ``tuned``), ``metrics.csv``, ``cases.csv`` (one row per test slice, case
``subject:slice``: ``slice_label``, ``call``, ``correct``, ``dice``/``iou`` of the gated mask,
``dice_ungated``/``iou_ungated``, ``brain_pixels``, ``lesion_pixels``, ``sim``, and the FLAIR reference's
``flair_call``, ``flair_correct``, ``flair_dice``, ``flair_iou``), ``maps.npz``, ``grid.png``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from tqdm import tqdm

from plugins.bea.fpdm import (DEFAULT_STRIDE, PROTOCOLS, combined_map, forward_process, fpdm_timesteps,
                              mask_thresholds, quantile_levels, tune_sim_cut)
from plugins.common.errors import InputError
from plugins.common.run_log import CASES_FILE, write_case_table, write_json_atomic
from plugins.data.brats_layout import check_modalities
from plugins.data.splits import SPLIT_FILE, run_split
from plugins.slice_diffusion.training import ARCHITECTURE_KEYS

FPDM_DEFAULTS = dict(
    protocol="anofpdm",
    w=2.0,
    t_max=0,
    t_stride=0,
    fpdm_modalities="flair,t2",
    q_lo=0.90,
    q_hi=0.98,
    median_size=5,
    min_component=40,
    flair_quantile=0.99,
    batch_size=16,
    num_eval_cases=0,
    slice_step=1,
    use_ema=True,
    seed=0,
)
#: One phrase per flag, for ``--help``.
FPDM_HELP = dict(
    protocol="anofpdm: deterministic forward by DDIM inversion (AnoFPDM's BraTS setting); "
             "fast: stochastic q_sample per step (AnoFPDM's d_reverse=False)",
    w="guidance strength towards healthy, fixed (AnoFPDM's BraTS value 2)",
    t_max="last forward step, in the model's (respaced) diffusion steps; 0 = 60%% of them (AnoFPDM: 600 of 1000)",
    t_stride="use every t_stride-th step up to t_max; 0 = the protocol's default (anofpdm 1, fast 10)",
    fpdm_modalities="modalities whose maps are scored, comma-separated (AnoFPDM: flair,t2)",
    q_lo="mask quantile for the strongest anomalies",
    q_hi="mask quantile for the weakest anomalies",
    median_size="median filter side of the anomaly map, pixels at 128 px, scaled by the side for other sizes "
                "(nearest odd, >= 1: 1 at 32 px, 3 at 64 px; AnoFPDM: 5 at 128 px)",
    min_component="mask components of at most this many pixels at 128 px are removed, scaled by area for "
                  "other sizes (AnoFPDM: 40 at 128 px)",
    flair_quantile="FLAIR reference threshold: this quantile of FLAIR in the brain of healthy tuning slices",
    batch_size="slices per forward batch (the model sees twice as many)",
    num_eval_cases="score only the first N test subjects (0 = all)",
    slice_step="score every slice_step-th slice",
    use_ema="load the EMA weights of the checkpoint's step",
    seed="seed of the forward noise (the tune/test halving follows the split file's own seed)",
    model_path="a modelNNNNNN.pt checkpoint or a run directory (its latest checkpoint)",
    data_dir="BraTS folder (default: the one the run was trained on)",
    out_dir="output folder (default: MODEL_RUN/fpdm)",
)
MODEL_KEYS = ARCHITECTURE_KEYS + ("use_bea", "bea_enc_block", "bea_dec_block", "image_size", "value_range", "crop")


@dataclass
class FpdmSettings:
    """The resolved protocol of one evaluation (recorded as ``metrics.json["protocol"]``)."""

    name: str
    w: float
    t_max: int
    t_stride: int
    timesteps: list
    modalities: list
    channels: list
    flair_channel: int
    q_lo: float
    q_hi: float
    median_size: int            # as given, pixels at 128 px
    median_size_px: int         # applied at this image size
    min_component: int          # as given, pixels at 128 px
    min_component_px: int       # applied at this image size
    flair_quantile: float

    def record(self) -> dict:
        forward = "ddim_inversion" if self.name == "anofpdm" else "q_sample"
        return {"name": self.name, "forward": forward, "w": self.w, "t_max": self.t_max, "t_stride": self.t_stride,
                "num_steps": len(self.timesteps), "modalities": self.modalities, "q_lo": self.q_lo,
                "q_hi": self.q_hi, "median_size": self.median_size, "median_size_px": self.median_size_px,
                "min_component": self.min_component,
                "min_component_px": self.min_component_px,
                "flair_quantile": self.flair_quantile, "brain_mask": "mean over modalities > lo + 0.025 (hi - lo)",
                "tuning": "slice labels only (M_max, image cut, FLAIR threshold); no pixel labels"}


def resolve_settings(args, config, num_timesteps: int) -> FpdmSettings:
    """Check the FPDM flags against the model; ``t_max``/``t_stride`` 0 take their defaults."""
    if args.protocol not in PROTOCOLS:
        raise InputError(f"--protocol: got {args.protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if args.w < 0:
        raise InputError(f"--w: got {args.w}; expected a guidance strength >= 0")
    t_max = args.t_max or max(1, int(round(0.6 * num_timesteps)))
    if not 0 < t_max <= num_timesteps:
        raise InputError(f"--t_max: got {args.t_max}; expected 1..{num_timesteps} (the model's diffusion steps"
                         " after respacing), or 0 for 60% of them")
    stride = args.t_stride or DEFAULT_STRIDE[args.protocol]
    if not 0 < stride <= t_max:
        raise InputError(f"--t_stride: got {args.t_stride}; expected 1..t_max ({t_max}), or 0 for the protocol's default")
    if not 0 < args.q_lo <= args.q_hi < 1:
        raise InputError(f"--q_lo/--q_hi: got {args.q_lo}/{args.q_hi}; expected 0 < q_lo <= q_hi < 1")
    if not 0 < args.flair_quantile < 1:
        raise InputError(f"--flair_quantile: got {args.flair_quantile}; expected 0 < value < 1")
    if args.median_size < 1 or args.min_component < 0:
        raise InputError(f"--median_size/--min_component: got {args.median_size}/{args.min_component}; "
                         "expected >= 1 and >= 0")
    trained = check_modalities(config.modalities)
    chosen = check_modalities(args.fpdm_modalities, "--fpdm_modalities")
    missing = [m for m in chosen if m not in trained]
    if missing:
        raise InputError(f"--fpdm_modalities: {', '.join(missing)} not among the model's modalities {','.join(trained)}")
    if "flair" not in trained:
        raise InputError(f"modalities: the model has {','.join(trained)}; the FLAIR reference needs flair")
    return FpdmSettings(name=args.protocol, w=float(args.w), t_max=t_max, t_stride=stride,
                        timesteps=fpdm_timesteps(t_max, stride), modalities=chosen,
                        channels=[trained.index(m) for m in chosen], flair_channel=trained.index("flair"),
                        q_lo=args.q_lo, q_hi=args.q_hi, median_size=args.median_size,
                        median_size_px=scaled_median_size(args.median_size, int(config.image_size)),
                        min_component=args.min_component,
                        min_component_px=int(round(args.min_component * (int(config.image_size) / 128) ** 2)),
                        flair_quantile=args.flair_quantile)


def scaled_median_size(size_at_128: int, image_size: int) -> int:
    """The median filter side at ``image_size``: ``size_at_128 * image_size / 128`` to the nearest odd integer, >= 1
    (the same extent in the brain as AnoFPDM's 5 px at 128 px: 1 at 32 px, 3 at 64 px, 5 at 128 px)."""
    return max(1, 2 * int(round((size_at_128 * image_size / 128 - 1) / 2)) + 1)


def halve_subjects(val_subjects: list, seed: int) -> tuple[list, list]:
    """(tune, test) halves of the validation subjects; test gets the extra one."""
    order = sorted(val_subjects)
    np.random.default_rng(seed).shuffle(order)
    cut = len(order) // 2
    return sorted(order[:cut]), sorted(order[cut:])


def tune_and_test_subjects(run_dir: str, num_eval_cases: int = 0) -> tuple[list, list]:
    """Halve the run's validation subjects (``split.json``, by its seed); keep the first ``num_eval_cases`` test
    ones (0 = all)."""
    split_path = os.path.join(run_dir, SPLIT_FILE)
    split = run_split(run_dir)
    if split is None:
        raise InputError(f"{split_path}: missing; the run directory must hold the split it was trained with")
    tune_subjects, test_subjects = halve_subjects(split["val"], split.get("seed") or 0)
    if not tune_subjects:
        raise InputError(f"{split_path}: FPDM needs at least two validation subjects (one to tune, one to test)")
    return tune_subjects, test_subjects[:num_eval_cases] if num_eval_cases else test_subjects


def brain_mask(images: torch.Tensor, value_range) -> torch.Tensor:
    """[N, C, S, S] -> [N, S, S] bool: ``mean_c(x) > lo + 0.025 (hi - lo)`` (AnoFPDM's ``> -0.95`` in [-1, 1])."""
    lo, hi = value_range
    return images.float().mean(dim=1) > lo + 0.025 * (hi - lo)


def remove_small_components(masks: torch.Tensor, max_size: int) -> torch.Tensor:
    """[N, S, S] bool: drop 8-connected components whose filled area is at most ``max_size`` pixels."""
    out = masks.numpy().copy()
    for mask in out:
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[box] == index
            if ndimage.binary_fill_holes(component).sum() <= max_size:
                mask[box][component] = False
    return torch.from_numpy(out)


@dataclass
class SliceOutputs:
    """FPDM outputs over a list of slices; ``maps``/``thresholds`` only when scored with tuned values."""

    m_te: torch.Tensor          # [N, M]
    sim: torch.Tensor           # [N]
    gt: torch.Tensor            # [N, S, S] bool
    brain: torch.Tensor         # [N, S, S] bool
    flair: torch.Tensor         # [N, S, S]
    images: torch.Tensor        # [N, S, S] first scored modality, for figures
    labels: torch.Tensor        # [N] slice labels
    subjects: list
    slice_index: list
    maps: torch.Tensor | None = None        # [N, S, S] anomaly map H
    thresholds: torch.Tensor | None = None  # [N]


@dataclass
class Tuned:
    m_max: list
    sim_cut: float
    flair_threshold: float
    num_slices: dict = field(default_factory=dict)


def run_fpdm(model, diffusion, dataset, settings: FpdmSettings, batch_size: int, seed: int, slice_step: int = 1,
             tuned: Tuned | None = None, desc: str = "fpdm") -> SliceOutputs:
    """FPDM over every ``slice_step``-th slice of ``dataset``; with ``tuned``, also maps and mask thresholds."""
    indices = list(range(0, len(dataset), slice_step))
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    value_range = dataset.settings.value_range
    parts: dict[str, list] = {k: [] for k in ("m_te", "sim", "gt", "brain", "flair", "images", "labels",
                                               "subjects", "slice_index", "maps", "thresholds")}
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, unit="batch"):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        x0 = torch.stack([it["image"] for it in items])
        stats = forward_process(model, diffusion, x0.to(device), settings.channels, settings.timesteps, settings.w,
                                settings.name, generator, value_range)
        parts["m_te"].append(stats.m_te)
        parts["sim"].append(stats.sim)
        parts["gt"].append(torch.stack([it["seg"][0] > 0.5 for it in items]))
        parts["brain"].append(brain_mask(x0, value_range))
        parts["flair"].append(x0[:, settings.flair_channel])
        parts["images"].append(x0[:, settings.channels[0]])
        parts["labels"].append(torch.tensor([it["slice_label"] for it in items]))
        parts["subjects"] += [it["subject"] for it in items]
        parts["slice_index"] += [it["slice_index"] for it in items]
        if tuned is not None:
            parts["maps"].append(combined_map(stats.maps, settings.median_size_px))
            q = quantile_levels(stats.m_te, torch.tensor(tuned.m_max), settings.q_lo, settings.q_hi)
            parts["thresholds"].append(mask_thresholds(stats.maps, q))
    cat = {k: (torch.cat(v) if v and torch.is_tensor(v[0]) else (v or None)) for k, v in parts.items()}
    return SliceOutputs(**cat)


def tune(out: SliceOutputs, settings: FpdmSettings, where: str) -> Tuned:
    """``M_max``, the image cut and the FLAIR threshold from the tuning slices' labels (no pixel labels)."""
    sick, healthy = out.labels == 1, out.labels == 0
    if not sick.any() or not healthy.any():
        raise InputError(f"{where}: the tuning subjects hold {int(sick.sum())} tumour and {int(healthy.sum())} "
                         "healthy slices; FPDM tuning needs both")
    flair_healthy = out.flair[healthy][out.brain[healthy]].double().numpy()  # every pixel, exact in float64
    return Tuned(m_max=out.m_te[sick].max(dim=0).values.tolist(),
                 sim_cut=tune_sim_cut(out.sim[healthy], out.sim[sick]),
                 flair_threshold=float(np.quantile(flair_healthy, settings.flair_quantile)),
                 num_slices={"healthy": int(healthy.sum()), "unhealthy": int(sick.sum())})


def per_slice_overlap(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per slice, [N] each, with AnoFPDM's smoothing 1e-6 (empty vs empty = 1)."""
    inter = (pred & gt).flatten(1).sum(1).double()
    size = pred.flatten(1).sum(1).double() + gt.flatten(1).sum(1).double()
    union = (pred | gt).flatten(1).sum(1).double()
    return (2 * inter + 1e-6) / (size + 1e-6), (inter + 1e-6) / (union + 1e-6)


def _rank_scores(values: torch.Tensor) -> torch.Tensor:
    """Values scaled into [0, 1] (same ranking; torchmetrics applies no sigmoid then)."""
    values = values.double()
    span = (values.max() - values.min()).clamp_min(1e-12)
    return ((values - values.min()) / span).float()


def pixel_scores(maps: torch.Tensor, gt: torch.Tensor, brain: torch.Tensor) -> dict:
    """AUPRC and AUROC of ``maps`` over the brain pixels (None without lesion pixels or without healthy ones)."""
    target = gt[brain].long()
    if not target.any() or target.all():
        return {"auprc": None, "auroc": None}
    scores = _rank_scores(maps[brain])
    return {"auprc": float(binary_average_precision(scores, target)), "auroc": float(binary_auroc(scores, target))}


def subset_metrics(maps, brain, gt, masks, calls, labels) -> dict:
    """One subset: pixel AUPRC/AUROC in the brain, mean per-slice Dice/IoU of ``masks``, image-level figures."""
    dice, iou = per_slice_overlap(masks, gt & brain)
    positive = labels == 1
    called = calls == 1
    return {"num_slices": int(len(labels)), **pixel_scores(maps, gt, brain),
            "dice": float(dice.mean()), "iou": float(iou.mean()),
            "image_accuracy": float((called == positive).double().mean()),
            "image_recall": float(called[positive].double().mean()) if positive.any() else None,
            "image_precision": float(positive[called].double().mean()) if called.any() else None}


@dataclass
class Scored:
    metrics: dict
    reference_flair: dict
    reference_random_auprc: float
    reference_all_healthy_accuracy: float
    masks: torch.Tensor         # [N, S, S] ungated, filtered
    calls: torch.Tensor         # [N]
    flair_masks: torch.Tensor   # [N, S, S]
    flair_calls: torch.Tensor   # [N]
    rows: list


def score(out: SliceOutputs, tuned: Tuned, min_component: int) -> Scored:
    """Metrics of FPDM and of the references on "mixed" and "unhealthy", plus the per-slice rows."""
    masks = remove_small_components((out.maps >= out.thresholds[:, None, None]) & out.brain, min_component)
    calls = (out.sim <= tuned.sim_cut).long()
    gated = masks & calls.bool()[:, None, None]
    flair_masks = remove_small_components((out.flair >= tuned.flair_threshold) & out.brain, min_component)
    flair_calls = flair_masks.flatten(1).any(1).long()
    sick = out.labels == 1
    subsets = {"mixed": torch.ones_like(sick), "unhealthy": sick}

    def both(maps, mixed_masks, ungated, c):
        return {name: (subset_metrics(maps[s], out.brain[s], out.gt[s], (mixed_masks if name == "mixed" else ungated)[s],
                                      c[s], out.labels[s]) if s.any() else None) for name, s in subsets.items()}

    lesion = (out.gt & out.brain).flatten(1).sum(1)
    brain_pixels = out.brain.flatten(1).sum(1)
    random = float(lesion.sum() / brain_pixels.sum())  # the "mixed" test set's lesion prevalence in the brain
    dice, iou = per_slice_overlap(gated, out.gt & out.brain)
    dice_u, iou_u = per_slice_overlap(masks, out.gt & out.brain)
    f_dice, f_iou = per_slice_overlap(flair_masks, out.gt & out.brain)
    rows = [{"case": f"{s}:{z}", "subject": s, "slice_label": int(out.labels[i]), "call": int(calls[i]),
             "correct": int(calls[i] == out.labels[i]), "dice": float(dice[i]), "iou": float(iou[i]),
             "dice_ungated": float(dice_u[i]), "iou_ungated": float(iou_u[i]), "brain_pixels": int(brain_pixels[i]),
             "lesion_pixels": int(lesion[i]), "sim": float(out.sim[i]), "flair_call": int(flair_calls[i]),
             "flair_correct": int(flair_calls[i] == out.labels[i]), "flair_dice": float(f_dice[i]),
             "flair_iou": float(f_iou[i])}
            for i, (s, z) in enumerate(zip(out.subjects, out.slice_index))]
    return Scored(metrics=both(out.maps, gated, masks, calls),
                  reference_flair=both(out.flair, flair_masks, flair_masks, flair_calls),
                  reference_random_auprc=random,
                  reference_all_healthy_accuracy=float((out.labels == 0).double().mean()),
                  masks=masks, calls=calls, flair_masks=flair_masks, flair_calls=flair_calls, rows=rows)


def write_outputs(out_dir: str, out: SliceOutputs, scored: Scored, tuned: Tuned, settings: FpdmSettings,
                  extra: dict) -> None:
    """``maps.npz``, ``metrics.json``, ``metrics.csv``, ``cases.csv`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    np.savez_compressed(os.path.join(out_dir, "maps.npz"), maps=out.maps.numpy().astype(np.float32),
                        masks=scored.masks.numpy(), gt=out.gt.numpy(), brain=out.brain.numpy(),
                        calls=scored.calls.numpy(), labels=out.labels.numpy(), m_te=out.m_te.numpy(),
                        sim=out.sim.numpy(), thresholds=out.thresholds.numpy(), subjects=np.array(out.subjects),
                        slice_index=np.array(out.slice_index))
    write_json_atomic(os.path.join(out_dir, "metrics.json"),
                      {"protocol": settings.record(), "metrics": scored.metrics,
                       "reference_flair": scored.reference_flair,
                       "reference_random_auprc": scored.reference_random_auprc,
                       "reference_all_healthy_accuracy": scored.reference_all_healthy_accuracy,
                       "tuned": tuned.__dict__, **extra},
                      indent=2)
    with open(os.path.join(out_dir, "metrics.csv"), "w") as f:
        f.write("source,subset,metric,value\n")
        for source, table in (("fpdm", scored.metrics), ("reference_flair", scored.reference_flair)):
            for subset, values in table.items():
                for key, value in (values or {}).items():
                    f.write(f"{source},{subset},{key},{'' if value is None else value}\n")
        f.write(f"reference_random,mixed,auprc,{scored.reference_random_auprc}\n")
        f.write(f"reference_all_healthy,mixed,image_accuracy,{scored.reference_all_healthy_accuracy}\n")
    write_case_table(os.path.join(out_dir, CASES_FILE), scored.rows)


def save_grid(path: str, out: SliceOutputs, masks: torch.Tensor, rows: int = 4) -> None:
    """PNG grid: input (first scored modality), ground truth, anomaly map, ungated mask, for fixed slices.

    The slices are the ``rows`` with the most tumour (ties and healthy cohorts by order), so every
    variant evaluated on the same data shows the same slices.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = torch.argsort(out.gt.flatten(1).sum(1), descending=True, stable=True)[:rows].tolist()
    fig, axes = plt.subplots(len(order), 4, figsize=(8, 2 * len(order)), squeeze=False)
    for r, i in enumerate(order):
        panels = [out.images[i], out.gt[i].float(), out.maps[i], masks[i].float()]
        for c, (panel, title) in enumerate(zip(panels, ["input", "ground truth", "anomaly map", "mask"])):
            axes[r, c].imshow(panel.numpy(), cmap="gray" if c != 2 else "magma")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
        axes[r, 0].text(2, 10, f"{out.subjects[i]} z={out.slice_index[i]}", color="yellow", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
