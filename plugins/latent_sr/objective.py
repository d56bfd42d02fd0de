"""One training objective: rectified-flow velocity loss plus the optional branches.

``L = L_diff + lambda_pix [w_adapt] L_pix + lambda_lpl L_LPL`` with
``L_diff = mse(v_hat, eps - z0)``; ``v_hat = denoiser([z_t, c], 1000 t)`` where the
condition ``c = E(bicubic_up(lr))`` for paired samples and 0 for unpaired ones
(paired conditioning by channel concatenation: the denoiser sees 2 x latent_channels).
Logs: ``loss``, ``loss_diff``, and when on ``loss_pixel`` (unweighted), ``pixel_fraction`` (the
gated fraction of the batch), ``pixel_adaptive_weight``, ``loss_lpl``, ``lpl_fraction``; after the
backward pass :meth:`SRFlowObjective.grad_logs` adds ``pixel_grad_share``, the weighted pixel
term's share of the gradient the denoiser receives at its output ``v_hat`` (every parameter's
gradient flows through it):

    share = ||g_pix|| / (||g_pix|| + ||g_v - g_pix||),  g_v = dL/dv_hat,  g_pix = d(lambda L_pix)/dv_hat,

read from two tensor hooks during the one backward pass (no extra pass; a loss scale cancels).
``--pixel_loss_weight`` alone uses the seed's gate (l2, t <= 0.3, paired samples only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plugins.backbones.registry import output_layer_weight
from plugins.common.errors import InputError
from plugins.latent_sr import codec
from plugins.latent_sr.adaptive import adaptive_weight
from plugins.latent_sr.flow import NUM_TRAIN_TIMESTEPS, interpolate, sample_timesteps, velocity, x0_from_velocity
from plugins.latent_sr.lpl import DecoderFeatureLoss
from plugins.latent_sr.pipeline import upsample
from plugins.latent_sr.pixel_loss import GatedPixelLoss, check_pixel_args

#: Loss flags (the trainer's defaults: every branch off).
LOSS_DEFAULTS = dict(
    timestep_shift=1.0,
    logit_mean=0.0,
    logit_std=1.0,
    pixel_loss_weight=0.0,
    pixel_loss_type="l2",
    pixel_loss_max_t=0.3,
    pixel_loss_schedule="hard",
    pixel_loss_paired_only=True,
    pixel_adaptive_weight=False,
    adaptive_weight_max=1e4,
    lpl_weight=0.0,
    lpl_max_t=0.25,
    lpl_outlier_threshold=3.0,
)
#: One phrase per flag of ``LOSS_DEFAULTS`` (meaning, units), for ``--help``.
LOSS_HELP = dict(
    timestep_shift="shift of the flow-matching timesteps t in (0, 1), training and sampling (1 = none)",
    logit_mean="mean of the logit-normal timestep density",
    logit_std="standard deviation of the logit-normal timestep density",
    pixel_loss_weight="weight of the gated pixel loss on the decoded x0 estimate (0 = off)",
    pixel_loss_type="pixel loss: l1 or l2, in [-1, 1] pixel units",
    pixel_loss_max_t="pixel loss only for timesteps t <= this, a fraction of the flow in (0, 1]",
    pixel_loss_schedule="pixel-loss gate: hard (1 below max_t) or ramp ((max_t - t) / max_t)",
    pixel_loss_paired_only="pixel loss only on samples with a real low-resolution pair",
    pixel_adaptive_weight="scale the pixel loss by the ratio of gradient norms at the last layer (VQGAN-style)",
    adaptive_weight_max="upper bound of that adaptive ratio",
    lpl_weight="weight of the latent perceptual loss through the frozen decoder's features (0 = off)",
    lpl_max_t="LPL only for timesteps t <= this, a fraction of the flow in (0, 1]",
    lpl_outlier_threshold="LPL masks positions whose standardised target feature exceeds this, in std units",
)


def check_loss_config(cfg: dict) -> None:
    check_pixel_args(cfg["pixel_loss_type"], cfg["pixel_loss_max_t"], cfg["pixel_loss_schedule"])
    for key in ("pixel_loss_weight", "lpl_weight"):
        if cfg[key] < 0:
            raise InputError(f"--{key}: expected a value >= 0, got {cfg[key]}")
    if cfg["timestep_shift"] <= 0 or cfg["logit_std"] <= 0:
        raise InputError("--timestep_shift and --logit_std: expected positive values, got "
                         f"{cfg['timestep_shift']} and {cfg['logit_std']}")
    if not 0.0 < cfg["lpl_max_t"] <= 1.0:
        raise InputError(f"--lpl_max_t: expected a value in (0, 1], got {cfg['lpl_max_t']}")


class SRFlowObjective:
    """``loss, logs = objective(denoiser, batch)``; ``batch``: ``hr`` [B,1,H,W], ``lr`` [B,1,h,w], ``paired`` [B]."""

    def __init__(self, vae, cfg: dict, scale: int, pixel_range: str = "signed"):
        check_loss_config(cfg)
        self.vae, self.cfg, self.scale, self.pixel_range = vae, cfg, scale, pixel_range
        self.pixel = None
        if cfg["pixel_loss_weight"] > 0:
            self.pixel = GatedPixelLoss(cfg["pixel_loss_type"], cfg["pixel_loss_max_t"],
                                        cfg["pixel_loss_schedule"], cfg["pixel_loss_paired_only"])
        self.lpl = None
        if cfg["lpl_weight"] > 0:
            self.lpl = DecoderFeatureLoss(vae, self.decode, cfg["lpl_max_t"], cfg["lpl_outlier_threshold"])
        self._grads: dict = {}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return codec.encode(self.vae, images, self.pixel_range)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return codec.decode(self.vae, latents, self.pixel_range)

    @torch.no_grad()
    def latents(self, batch: dict):
        """Target latents ``z0`` and condition latents ``c`` (zero for unpaired samples)."""
        z0 = self.encode(batch["hr"])
        cond = self.encode(upsample(batch["lr"], self.scale))
        return z0, cond * batch["paired"].to(cond.dtype).view(-1, 1, 1, 1)

    def __call__(self, denoiser, batch: dict):
        cfg = self.cfg
        z0, cond = self.latents(batch)
        eps = torch.randn_like(z0)
        t = sample_timesteps(z0.shape[0], cfg["timestep_shift"], cfg["logit_mean"], cfg["logit_std"], z0.device)
        z_t = interpolate(z0, eps, t)
        v_hat = denoiser(torch.cat([z_t, cond], dim=1), t * NUM_TRAIN_TIMESTEPS).sample
        loss_diff = F.mse_loss(v_hat.float(), velocity(z0, eps).float())
        loss, logs = loss_diff, {"loss_diff": loss_diff.detach()}
        if self.lpl is not None:
            z0_hat = x0_from_velocity(z_t, t, v_hat)
        if self.pixel is not None:
            z0_pix = x0_from_velocity(z_t, t, v_hat)  # its own node: its gradient is the pixel term's alone
            self._watch(v_hat, z0_pix, t)
            loss_pix, fraction = self.pixel(self.decode, z0_pix, batch["hr"], t, batch["paired"])
            weight = cfg["pixel_loss_weight"]
            if cfg["pixel_adaptive_weight"]:
                w_adapt = adaptive_weight(loss_diff, loss_pix, output_layer_weight(_unwrap(denoiser)),
                                          cfg["adaptive_weight_max"])
                logs["pixel_adaptive_weight"] = w_adapt
                weight = weight * w_adapt
            loss = loss + weight * loss_pix
            logs.update(loss_pixel=loss_pix.detach(), pixel_fraction=fraction)
        if self.lpl is not None:
            loss_lpl, fraction = self.lpl(z0_hat, z0, t)
            loss = loss + cfg["lpl_weight"] * loss_lpl
            logs.update(loss_lpl=loss_lpl.detach(), lpl_fraction=fraction)
        logs["loss"] = loss.detach()
        return loss, logs

    def _watch(self, v_hat: torch.Tensor, z0_pix: torch.Tensor, t: torch.Tensor) -> None:
        self._grads = {"t": t.detach()}
        if v_hat.requires_grad:
            v_hat.register_hook(lambda g: self._grads.__setitem__("v", g.detach()))
            z0_pix.register_hook(lambda g: self._grads.__setitem__("z0", g.detach()))

    def grad_logs(self) -> dict:
        """After ``backward``: ``{"pixel_grad_share": share}`` (module docstring) when the branch is on."""
        grads, self._grads = self._grads, {}
        if self.pixel is None or "v" not in grads:
            return {}
        if "z0" not in grads:  # nothing gated: the pixel term sent no gradient
            return {"pixel_grad_share": 0.0}
        g_pix = -grads["t"].view(-1, *[1] * (grads["z0"].ndim - 1)) * grads["z0"].float()  # z0 = z_t - t v
        rest = (grads["v"].float() - g_pix).norm()
        pix = g_pix.norm()
        return {"pixel_grad_share": float(pix / (pix + rest).clamp(min=1e-30))}


def _unwrap(model):
    return getattr(model, "module", model)
