"""The frozen 2D ``AutoencoderKL`` as a latent codec for [0, 1] grayscale images.

``encode(x) = (mean(E(r(x))) - shift) * scaling_factor`` and
``decode(z) = r^-1(D(z / scaling_factor + shift))``, with ``r`` mapping [0, 1] to the VAE's
pixel range (``unit``: [0, 1], as ``scripts/train_autoencoder.py`` trains it, the
trainer's default; ``signed``: [-1, 1], diffusers' convention). A VAE with
``in_channels`` C > 1 gets the gray image repeated C times and its decoded channels averaged.
Images [B, 1, H, W] <-> latents [B, latent_channels, H / f, W / f], ``f = 2^(len(blocks) - 1)``.
"""

from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from diffusers import AutoencoderKL

from plugins.common.errors import InputError

PIXEL_RANGES = ("signed", "unit")


def load_frozen_vae(vae_path: str) -> AutoencoderKL:
    """``AutoencoderKL.from_pretrained(vae_path)``, eval mode, no gradients for its weights."""
    if not vae_path:
        raise InputError("--vae_path: required; train the 2D autoencoder first with scripts/train_autoencoder.py "
                         "and pass its RUN_DIR/vae folder")
    if not os.path.isfile(os.path.join(vae_path, "config.json")):
        raise InputError(f"--vae_path: {vae_path} is not a saved AutoencoderKL folder (no config.json); expected "
                         f"RUN_DIR/vae written by scripts/train_autoencoder.py")
    try:
        vae = AutoencoderKL.from_pretrained(vae_path)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise InputError(f"--vae_path: {vae_path} could not be loaded as an AutoencoderKL ({err})") from None
    return vae.requires_grad_(False).eval()


def to_vae_range(x: torch.Tensor, pixel_range: str) -> torch.Tensor:
    return x * 2 - 1 if pixel_range == "signed" else x


def from_vae_range(x: torch.Tensor, pixel_range: str) -> torch.Tensor:
    return (x + 1) / 2 if pixel_range == "signed" else x


def check_pixel_range(pixel_range: str) -> str:
    if pixel_range not in PIXEL_RANGES:
        raise InputError(f"--vae_pixel_range: unknown range {pixel_range!r}; valid: {', '.join(PIXEL_RANGES)}")
    return pixel_range


def downsample_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae: AutoencoderKL, images: torch.Tensor, pixel_range: str) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1] -> scaled latent means [B, C, H/f, W/f]."""
    x = to_vae_range(images, pixel_range).to(vae.dtype)
    if vae.config.in_channels > 1:
        x = x.expand(-1, vae.config.in_channels, -1, -1)
    z = vae.encode(x).latent_dist.mean
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latents: torch.Tensor, pixel_range: str) -> torch.Tensor:
    """Scaled latents [B, C, h, w] -> images [B, 1, h f, w f] in [0, 1] units (not clamped)."""
    shift = vae.config.shift_factor or 0.0
    x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
    return from_vae_range(x.mean(1, keepdim=True), pixel_range)
