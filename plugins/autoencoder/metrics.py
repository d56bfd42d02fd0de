"""Per-volume reconstruction scores that expose an all-black reconstruction.

Foreground is ``value > threshold``. For one volume (prediction p, target x, both [C, *S]):

- ``psnr``: 10 log10(R^2 / mean((p - x)^2)), R = max(x) - min(x) (1 for min-max scaled volumes);
- ``fg_dice``: 2 |P & T| / (|P| + |T|) of predicted (P) and true (T) foreground voxels;
- ``fg_recall``: |P & T| / |T|;
- ``fg_volume_ratio``: |P| / |T|: ~0 for an all-black model, > 1 when the foreground is over-painted.

Dice, recall and ratio are None for a volume without true foreground. A validation set's figure is
the mean over its volumes (the per-case table's rows), and ``reference_black`` holds the same
figures for the all-black reconstruction p = 0.
"""

from __future__ import annotations

import math

import torch


def foreground_scores(pred: torch.Tensor, truth_fg: torch.Tensor, threshold: float, prefix: str = "fg_") -> dict:
    """{prefix + dice, recall, volume_ratio} of one volume; ``truth_fg`` boolean or {0, 1}, pred's shape."""
    p = pred.detach().float() > threshold
    t = truth_fg.detach() > 0.5
    n_pred, n_true, both = int(p.sum()), int(t.sum()), int((p & t).sum())
    if n_true == 0:
        return {f"{prefix}dice": None, f"{prefix}recall": None, f"{prefix}volume_ratio": None}
    return {f"{prefix}dice": 2 * both / (n_pred + n_true), f"{prefix}recall": both / n_true,
            f"{prefix}volume_ratio": n_pred / n_true}


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of one volume with the target's range as peak (inf when identical)."""
    target = target.detach().float()
    mse = float((pred.detach().float() - target).square().mean())
    peak = float(target.max() - target.min()) or 1.0
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def mean_over_cases(rows: list[dict], skip=("case", "subject")) -> dict:
    """{column: mean of its defined (non-None, finite) values} over ``rows``."""
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r if k not in skip):
        values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        out[key] = sum(values) / len(values) if values else None
    return out
