"""Ensemble sampling of segmentation diffusion, mean and STAPLE fusion, Dice/IoU and subject grades.

- ``sample_ensemble``: ``E`` masks per slice in one batched run of upstream's sampler
  (``ddim_sample_loop`` when ``use_ddim``, else ``p_sample_loop``; respacing is the
  diffusion's), each ``x_0 > 0``; the calibration map and the HGG probability of each slice
  come from the image pass (``heads.image_heads``, as in training and validation), once per slice.
- fusion: ``fuse_mean`` thresholds the ensemble mean of the sampled ``(x_0 + 1) / 2`` at 0.5;
  ``fuse_staple`` runs SimpleITK's STAPLE filter (Warfield et al. 2004) over the ``E`` binary
  masks of a whole volume (at most ``STAPLE_MAX_ITERATIONS`` EM iterations; SimpleITK's default
  is unbounded) and thresholds its foreground probability at 0.5 (voxels where STAPLE is
  undefined, e.g. every rater empty everywhere, take the mean fusion's label).

MedSegDiff's sampler also blends the calibration map into each sample (``cal_out``) and its
"new" version ensembles the raw samples; ours ensembles the raw samples and scores the
calibration map on its own (``plugins/segdiff/scoring.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from plugins.segdiff.heads import image_heads, image_timesteps

STAPLE_MAX_ITERATIONS = 100


@torch.no_grad()
def sample_ensemble(model, diffusion, image: torch.Tensor, num_ensemble: int, use_ddim: bool = False,
                    generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """``{"samples": [B, E, 1, S, S] in [-1, 1], "masks": [B, E, 1, S, S] bool, "calib": [B, 1, S, S] bool,
    "hgg_prob": [B] | None}`` (on the CPU)."""
    b, _, s, _ = image.shape
    device = image.device
    cls_logits, calib = image_heads(model, image, image_timesteps(diffusion, b, device))
    hgg = None if cls_logits is None else cls_logits.float().softmax(1)[:, 1].cpu()
    cond = image.repeat_interleave(num_ensemble, dim=0)
    x_T = torch.randn((b * num_ensemble, 1, s, s), generator=generator).to(device)
    loop = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
    sample = loop(model, x_T.shape, noise=x_T, clip_denoised=True, model_kwargs={"concat": cond},
                  device=device, progress=progress)
    sample = sample.float().view(b, num_ensemble, 1, s, s).cpu()
    return {"samples": sample, "masks": sample > 0, "calib": (calib.float() > 0).cpu(), "hgg_prob": hgg}


def fuse_mean(samples: torch.Tensor) -> torch.Tensor:
    """[..., E, 1, S, S] samples in [-1, 1] -> [..., 1, S, S] bool: ensemble mean of (x + 1) / 2 >= 0.5."""
    return ((samples + 1) / 2).mean(-4) >= 0.5


def fuse_staple(masks: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """STAPLE of ``masks`` [E, Z, S, S] (bool, one volume per rater) -> [Z, S, S] bool; ``fallback`` where undefined."""
    import SimpleITK as sitk  # evaluation only

    if masks.shape[0] == 1 or not masks.any():
        return fallback.copy()
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]
    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1.0)
    staple.SetMaximumIterations(STAPLE_MAX_ITERATIONS)
    prob = sitk.GetArrayFromImage(staple.Execute(images))
    fused = prob > 0.5
    undefined = ~np.isfinite(prob)
    fused[undefined] = fallback[undefined]
    return fused
