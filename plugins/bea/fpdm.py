"""FPDM: anomaly maps from the forward process of a classifier-free guided diffusion model.

Computes what AnoFPDM (Che et al., 2025; SoloChe/AnoFPDM: ``calc_pred_xstart_loop``,
``get_mask_batch_FPDM``, ``obtain_hyperpara``) computes. For clean slices ``x0`` [B, C, S, S],
timesteps ``t_0 = 0 < t_1 < ... < t_{K-1} < t_max`` (every ``stride``-th step of the model's,
possibly respaced, diffusion) and guidance strength ``w``:

    x_t          anofpdm: x_{t_0} = q_sample(x0, 0, eps); x_{t_k} = DDIM inversion step of
                 x_{t_{k-1}} with the null-class model (deterministic encoding)
                 fast:    q_sample(x0, t_k, eps_k), fresh noise per step (AnoFPDM's d_reverse=False)
    eps_c, eps_u = model(x_t, t, y=healthy), model(x_t, t, y=null)   # ONE 2B forward pass
    x0_g         = clip(x0(eps_g)),  eps_g = (1 + w) eps_c - w eps_u  # guided to healthy, clipped
    x0_r         = clip(x0(eps_c))                                    # AnoFPDM's unguided (w = 0)
    M_t[m]       = mean_pixels (x0_g - x0_r)^2 for modality m         # [K, B, M]
    t_e[m]       = argmax_t M_t[m]
    A[m]         = mean_{t <= t_e[m]} (x0_g - x0)^2[m]                # per-modality map [S, S]
    H            = median5x5( mean_m A[m] )                           # the anomaly map (5 at 128 px)
    e_t, e_t^r   = mean (x0_g - x0)^2, mean (x0_r - x0)^2             # error sequences over t
    sim          = cos(e, e^r)                                        # low = anomalous

Mask threshold (per slice) = ``mean_m quantile(A[m], q[m])`` with
``q[m] = q_hi - (q_hi - q_lo) * round(clamp(M_te[m] / M_max[m], 0, 1), 2)`` (0.90-0.98); the
slice is called unhealthy when ``sim <= sim_cut``. ``M_max`` (per modality: the largest
``M_te`` over the tuning set's unhealthy slices) and ``sim_cut`` (a low quantile of the
healthy tuning slices' ``sim``, :func:`tune_sim_cut`) use slice labels, never pixel labels.
``x0(eps) = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps`` (upstream's ``_predict_xstart_from_eps``);
``clip`` is the data's value range (AnoFPDM: [-1, 1]).

Where FPDM here (this module and :mod:`plugins.bea.evaluation`) differs from AnoFPDM's code, deliberately:

=============================  ===============================  =========================================
step                           AnoFPDM                          here, and why
=============================  ===============================  =========================================
inversion step index           step at loop ``t`` evaluates     aligned: x_{t_k} comes from the model at
                               the model at ``t`` on x_{t-1}    ``t_{k-1}`` on x_{t_{k-1}}; that null
                               and lands at level t+1           prediction is the one the guidance already
                               (labelled t): 3 forwards/step    needs, so 2 forwards (one 2B pass)/step
stride                         every step up to 600             every step by default; ``t_stride`` > 1
                                                                trades accuracy for time (reported)
aggregation window             steps ``[0, t_e)`` (empty, NaN,  steps ``[0, t_e]``
                               when t_e = 0)
median filter padding          torch ``reflect``                scipy ``mirror`` (the same values)
fast protocol                  ``d_reverse=False``              the same, as ``--protocol fast`` with
                                                                stride 10 by default
brain mask                     ``mean_c x > -0.95`` in [-1, 1]  ``mean_c x > lo + 0.025 (hi - lo)`` for
                                                                the data's range (the same in [-1, 1])
pixel AUPRC / AUROC            brain pixels, per batch of 50    brain pixels pooled over the test set
                               slices, averaged over batches    (no dependence on batch composition)
Dice / IoU                     per slice over the whole slice   per slice, the mask cut to the brain
                               after the 40-px filter           before the 40-px filter (equal when the
                                                                mask lies in the brain)
small-component filter         40 px at 128 px                  40 px at 128 px, scaled by the area for
                                                                other image sizes (2 px at 32 px)
median filter size             5x5 at 128 px                    5x5 at 128 px, scaled by the side to the
                                                                nearest odd size for other image sizes
                                                                (1 = none at 32 px, 3 at 64 px): a 5x5
                                                                filter at 32 px erases lesions of < 13 px
tuning data                    ``num_batches_val`` random       the run's tuning half of the validation
                               validation batches               subjects (halved by the split's seed),
                                                                every ``slice_step``-th slice
test data                      every brain slice of the test    the other half, every ``slice_step``-th
                               split's subjects                 slice (default 1; the cpu scale of
                                                                ``reproduce.py`` takes 4, for time)
=============================  ===============================  =========================================

Unchanged from AnoFPDM: w fixed (BraTS: 2), clipped guided x0, the healthy class at w = 0 as the
unguided reference, per-modality M_t / t_e / M_max / quantile with thresholds averaged over
modalities, the 0.90-0.98 quantile range in 0.01 steps, the image cut, ungated masks for the
unhealthy subset, the filled-area filter of components up to 40 pixels, smoothing 1e-6 in Dice/IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import median_filter

from plugins.bea.plugin import HEALTHY, NULL_CLASS

PROTOCOLS = ("anofpdm", "fast")
#: Default stride of each protocol (``--t_stride 0``).
DEFAULT_STRIDE = {"anofpdm": 1, "fast": 10}


def fpdm_timesteps(t_max: int, stride: int) -> list[int]:
    """``0, stride, 2 stride, ... < t_max`` (indices of the model's, possibly respaced, diffusion)."""
    return list(range(0, t_max, stride))


@dataclass
class FpdmStats:
    """What one batch leaves after the forward process (chosen modalities only)."""

    maps: torch.Tensor        # [B, M, S, S] per-modality maps A[m] (unfiltered)
    m: torch.Tensor           # [B, K, M] M_t per modality
    t_e: torch.Tensor         # [B, M] argmax step index per modality
    err: torch.Tensor         # [B, K] guided error sequence e_t
    err_ref: torch.Tensor     # [B, K] unguided error sequence e_t^r

    @property
    def m_te(self) -> torch.Tensor:
        """[B, M] M at t_e (= max_t M_t) per modality."""
        return self.m.max(dim=1).values

    @property
    def sim(self) -> torch.Tensor:
        """[B] cosine similarity of the error sequences (AnoFPDM's eps 1e-6)."""
        return torch.nn.functional.cosine_similarity(self.err, self.err_ref, dim=1, eps=1e-6)


def _abar(diffusion, t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(diffusion.alphas_cumprod[t]), dtype=like.dtype, device=like.device)


def ddim_invert(x: torch.Tensor, x0_pred: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from level ``abar_from`` to ``abar_to`` given the clipped x0 prediction.

    ``eps = (x - sqrt(abar_from) x0) / sqrt(1 - abar_from)``; returns ``sqrt(abar_to) x0 + sqrt(1 - abar_to) eps``.
    """
    eps = (x - abar_from.sqrt() * x0_pred) / (1 - abar_from).sqrt()
    return abar_to.sqrt() * x0_pred + (1 - abar_to).sqrt() * eps


@torch.no_grad()
def forward_process(model, diffusion, x0: torch.Tensor, channels: list[int], timesteps: list[int], w: float,
                    protocol: str = "anofpdm", generator: torch.Generator | None = None,
                    clip_range=(-1.0, 1.0)) -> FpdmStats:
    """Run FPDM over ``timesteps`` for one batch; one 2B forward pass per step, O(B M S S) memory.

    ``x0``: [B, C, S, S] in ``clip_range``; ``channels``: indices of the scored modalities.
    The per-modality maps are kept online: a running sum of ``(x0_g - x0)^2`` is snapshotted
    whenever ``M_t[m]`` reaches a new maximum, so nothing of size K x S x S is stored.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: got {protocol!r}; expected one of {PROTOCOLS}")
    b, c = x0.shape[:2]
    device = x0.device
    y = torch.cat([torch.full((b,), HEALTHY), torch.full((b,), NULL_CLASS)]).to(device)
    wrapped = diffusion._wrap_model(model)
    lo, hi = clip_range
    target = x0[:, channels]
    running = torch.zeros_like(target)
    maps = torch.zeros_like(target)
    best = torch.full(target.shape[:2], -1.0, dtype=x0.dtype, device=device)
    t_e = torch.zeros(target.shape[:2], dtype=torch.long, device=device)
    ms, errs, refs = [], [], []
    x_t = x0u = None
    for k, step in enumerate(timesteps):
        t = torch.full((b,), step, dtype=torch.long, device=device)
        if protocol == "fast" or k == 0:
            x_t = diffusion.q_sample(x0, t, noise=torch.randn(x0.shape, generator=generator).to(device))
        else:
            x_t = ddim_invert(x_t, x0u, _abar(diffusion, timesteps[k - 1], x0), _abar(diffusion, step, x0))
        out = wrapped(torch.cat([x_t, x_t]), torch.cat([t, t]), y=y)[:, :c]  # learned-sigma models: [eps, var]
        eps_c, eps_u = out[:b], out[b:]
        to_x0 = lambda eps: diffusion._predict_xstart_from_eps(x_t, t, eps).clamp(lo, hi)  # noqa: E731
        x0u = to_x0(eps_u)
        guided = to_x0((1.0 + w) * eps_c - w * eps_u)[:, channels]
        ref = to_x0(eps_c)[:, channels]
        err = (guided - target).pow(2)                                     # [B, M, S, S]
        running += err
        m = (guided - ref).pow(2).mean(dim=(2, 3))                         # [B, M]
        new = m > best
        best = torch.where(new, m, best)
        t_e = torch.where(new, torch.full_like(t_e, k), t_e)
        maps = torch.where(new[..., None, None], running / (k + 1), maps)
        ms.append(m)
        errs.append(err.mean(dim=(1, 2, 3)))
        refs.append((ref - target).pow(2).mean(dim=(1, 2, 3)))
    return FpdmStats(maps=maps.cpu(), m=torch.stack(ms, 1).cpu(), t_e=t_e.cpu(),
                     err=torch.stack(errs, 1).cpu(), err_ref=torch.stack(refs, 1).cpu())


def combined_map(maps: torch.Tensor, median_size: int = 5) -> torch.Tensor:
    """H: [B, M, S, S] -> [B, S, S], the modality mean median-filtered (``mirror`` = torch ``reflect``)."""
    mean = maps.mean(dim=1).numpy()
    return torch.from_numpy(median_filter(mean, size=(1, median_size, median_size), mode="mirror"))


def quantile_levels(m_te: torch.Tensor, m_max: torch.Tensor, q_lo: float = 0.90, q_hi: float = 0.98) -> torch.Tensor:
    """[B, M] quantiles ``q_hi - (q_hi - q_lo) * round(clamp(M_te / M_max, 0, 1), 2)``: stronger -> lower."""
    ratio = torch.round((m_te / m_max.clamp_min(1e-12)).clamp(0.0, 1.0), decimals=2)
    return q_hi - (q_hi - q_lo) * ratio


def mask_thresholds(maps: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[B] mean over modalities of the ``q[b, m]``-quantile of the unfiltered map ``A[b, m]`` (whole slice)."""
    flat = maps.flatten(2).float()                                        # [B, M, S*S]
    per = torch.stack([torch.stack([torch.quantile(flat[i, j], float(q[i, j])) for j in range(flat.shape[1])])
                       for i in range(flat.shape[0])])
    return per.mean(dim=1)


def tune_sim_cut(sim_healthy: torch.Tensor, sim_unhealthy: torch.Tensor) -> float:
    """AnoFPDM's image-level cut: over ``q`` in linspace(0.005, 0.095, 100), the ``q``-quantile of the
    healthy slices' ``sim`` that minimises missed unhealthy slices (``sim > cut``) plus healthy ones
    below it (``sim < cut``). At most ~10 % of healthy slices are false alarms by construction."""
    best, cut = None, None
    for q in np.linspace(0.005, 0.095, 100):
        c = torch.quantile(sim_healthy.double(), float(q))
        errors = int((sim_unhealthy.double() > c).sum() + (sim_healthy.double() < c).sum())
        if best is None or errors < best:
            best, cut = errors, float(c)
    return cut
