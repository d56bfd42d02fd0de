"""Gated pixel-space loss on the decoded clean estimate ``x0_hat = D(z_t - t v_hat)``.

Per-sample weight ``w_i``: ``1[t_i <= t_max]`` (``hard``) or ``max(0, (t_max - t_i) / t_max)``
(``ramp``), times ``1[paired_i]`` when ``paired_only``. Only samples with ``w_i > 0`` are decoded.
``L_pix = sum_i w_i l_i / n_gated`` with ``l_i`` the per-sample mean L1 or squared error in
[-1, 1] pixel units, ``x -> 2 x - 1`` (0 when nothing is gated); ``fraction = n_gated / B``.

The seed's branch (Bagel) scores the decoder's output in its VAE's [-1, 1] range, as diffusers'
VAEs work; our images are [0, 1], so the error is taken after ``2 x - 1`` whatever the VAE's own
range (``--vae_pixel_range``): L1 is twice, L2 four times its [0, 1] value, and
``--pixel_loss_weight 0.05`` weighs the term as the seed's 0.05 does (in [0, 1] units L2 at
0.05 acted like 0.0125).

| seed 003 (Bagel's branch) | here | why |
|---|---|---|
| error in the VAE's output range, [-1, 1] | error after ``2 x - 1`` of our [0, 1] images, whatever the VAE's range | the seed's weights keep their meaning with our [0, 1]-trained VAEs |
"""

from __future__ import annotations

import torch

from plugins.common.errors import InputError

LOSS_TYPES = ("l1", "l2")
SCHEDULES = ("hard", "ramp")


def check_pixel_args(loss_type: str, max_t: float, schedule: str) -> None:
    if loss_type not in LOSS_TYPES:
        raise InputError(f"--pixel_loss_type: unknown loss type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    if not 0.0 < max_t <= 1.0:
        raise InputError(f"--pixel_loss_max_t: expected a value in (0, 1], got {max_t}")
    if schedule not in SCHEDULES:
        raise InputError(f"--pixel_loss_schedule: unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def gate_weights(t: torch.Tensor, paired: torch.Tensor, max_t: float, schedule: str = "hard",
                 paired_only: bool = True) -> torch.Tensor:
    """Per-sample weights [B] in [0, 1] (see module docstring)."""
    if schedule == "ramp":
        w = ((max_t - t) / max_t).clamp(min=0.0)
    else:
        w = (t <= max_t).to(t.dtype)
    if paired_only:
        w = w * paired.to(w.dtype)
    return w


def per_sample_error(pred: torch.Tensor, target: torch.Tensor, loss_type: str) -> torch.Tensor:
    """[B, ...] x2 in [0, 1] -> [B]: mean absolute (``l1``) or squared (``l2``) error per sample, in [-1, 1]
    units (the difference of ``2 x - 1``, i.e. twice the [0, 1] difference)."""
    diff = 2.0 * (pred.float() - target.float())
    err = diff.abs() if loss_type == "l1" else diff.square()
    return err.flatten(1).mean(1)


class GatedPixelLoss:
    """``loss, fraction = GatedPixelLoss(...)(decode, z0_hat, hr, t, paired)``; decodes ``z0_hat[w > 0]`` only.

    ``decode``: latents [n, C, h, w] -> pixels [n, 1, H, W] in [0, 1] (gradients flow through it).
    """

    def __init__(self, loss_type: str = "l2", max_t: float = 0.3, schedule: str = "hard", paired_only: bool = True):
        check_pixel_args(loss_type, max_t, schedule)
        self.loss_type, self.max_t, self.schedule, self.paired_only = loss_type, max_t, schedule, paired_only

    def weights(self, t: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
        return gate_weights(t, paired, self.max_t, self.schedule, self.paired_only)

    def __call__(self, decode, z0_hat: torch.Tensor, hr: torch.Tensor, t: torch.Tensor, paired: torch.Tensor):
        w = self.weights(t, paired)
        idx = torch.nonzero(w > 0).flatten()
        fraction = idx.numel() / max(1, w.numel())
        if idx.numel() == 0:
            return z0_hat.new_zeros((), dtype=torch.float32), fraction
        x0_hat = decode(z0_hat[idx])
        err = per_sample_error(x0_hat, hr[idx], self.loss_type)
        return (w[idx].float() * err).sum() / idx.numel(), fraction
