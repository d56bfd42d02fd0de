"""AutoencoderKL by configuration: MONAI's for 3D, diffusers' for 2D, behind one interface.

:class:`KLAutoencoder` wraps either network so the trainer sees one API:
``forward(x) -> (reconstruction, z_mu, z_logvar)`` for x [B, C, *spatial],
``last_layer_weight()`` (the decoder's output convolution, for adaptive loss
weighting), and latent scaling: ``encode_latents(x) = scaling_factor * z`` and
``decode_latents(z) = decode(z / scaling_factor)``, with z the posterior mean
(as the latent SR codec encodes) and ``scaling_factor`` = 1 / std(z) measured
on training data (:func:`measure_scaling_factor`), so scaled latents have unit
std. (Posterior samples would add the posterior's noise: early in training
their std is well above the means', and the means came out at std 0.67.)
diffusers stores ``config.scaling_factor`` but never applies it; here it is
applied by these two methods and saved with the weights:

- 2D: ``save_pretrained`` into ``RUN_DIR/vae/`` (load with
  ``diffusers.AutoencoderKL.from_pretrained``; ``config.scaling_factor`` set).
- 3D: ``RUN_DIR/autoencoder/{config.json, model.pt}`` (load with :func:`load_autoencoder`).
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from monai.networks.nets import AutoencoderKL as MonaiAutoencoderKL
from torch import nn

from patches.checkpoints import atomic_save, load_checkpoint
from plugins.common.errors import InputError

MODEL_KEYS = ("spatial_dims", "in_channels", "out_channels", "num_channels", "latent_channels", "num_res_blocks",
              "attention_levels", "norm_num_groups", "with_encoder_nonlocal_attn", "with_decoder_nonlocal_attn")


def model_kwargs(ae_cfg: dict) -> dict:
    """The model keys of an ``autoencoder:`` section."""
    return {k: ae_cfg[k] for k in MODEL_KEYS}


def _build_network(kw: dict, gradient_checkpointing: bool) -> nn.Module:
    n_levels = len(kw["num_channels"])
    if kw["spatial_dims"] == 3:
        return MonaiAutoencoderKL(
            spatial_dims=3, in_channels=kw["in_channels"], out_channels=kw["out_channels"],
            channels=tuple(kw["num_channels"]), latent_channels=kw["latent_channels"],
            num_res_blocks=(kw["num_res_blocks"],) * n_levels, attention_levels=tuple(kw["attention_levels"]),
            norm_num_groups=kw["norm_num_groups"], with_encoder_nonlocal_attn=kw["with_encoder_nonlocal_attn"],
            with_decoder_nonlocal_attn=kw["with_decoder_nonlocal_attn"], use_checkpoint=gradient_checkpointing)
    if kw["spatial_dims"] == 2:
        vae = DiffusersAutoencoderKL(
            in_channels=kw["in_channels"], out_channels=kw["out_channels"],
            down_block_types=("DownEncoderBlock2D",) * n_levels, up_block_types=("UpDecoderBlock2D",) * n_levels,
            block_out_channels=tuple(kw["num_channels"]), layers_per_block=kw["num_res_blocks"],
            latent_channels=kw["latent_channels"], norm_num_groups=kw["norm_num_groups"],
            mid_block_add_attention=kw["with_encoder_nonlocal_attn"] or kw["with_decoder_nonlocal_attn"])
        if gradient_checkpointing:
            vae.enable_gradient_checkpointing()
        return vae
    raise InputError(f"autoencoder.spatial_dims: expected 2 or 3, got {kw['spatial_dims']!r}")


class KLAutoencoder(nn.Module):
    """A KL autoencoder (3D MONAI or 2D diffusers) with one interface and a latent scaling factor."""

    def __init__(self, kw: dict, gradient_checkpointing: bool = False, scaling_factor: float = 1.0,
                 net: nn.Module | None = None):
        super().__init__()
        self.kw = dict(kw)
        self.spatial_dims = kw["spatial_dims"]
        self.net = net if net is not None else _build_network(kw, gradient_checkpointing)
        self.scaling_factor = float(scaling_factor)

    @property
    def downsample_factor(self) -> int:
        """Every spatial size must be divisible by this: 2^(len(num_channels) - 1)."""
        return 2 ** (len(self.kw["num_channels"]) - 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, *S] -> (z_mu, z_logvar), each [B, latent_channels, *S / downsample_factor]."""
        if self.spatial_dims == 3:
            z_mu, z_sigma = self.net.encode(x)
            return z_mu, 2.0 * torch.log(z_sigma)
        dist = self.net.encode(x).latent_dist
        return dist.mean, dist.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z) if self.spatial_dims == 3 else self.net.decode(z).sample

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (reconstruction of x's shape, z_mu, z_logvar); z = z_mu + exp(z_logvar / 2) * eps."""
        z_mu, z_logvar = self.encode(x)
        eps = torch.randn(z_mu.shape, generator=generator, device=z_mu.device, dtype=z_mu.dtype)
        return self.decode(z_mu + torch.exp(0.5 * z_logvar) * eps), z_mu, z_logvar

    def last_layer_weight(self) -> torch.Tensor:
        """The weight of the decoder's output convolution."""
        if self.spatial_dims == 3:
            return self.net.decoder.blocks[-1].conv.weight
        return self.net.decoder.conv_out.weight

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """scaling_factor * z_mu, the posterior mean."""
        return self.scaling_factor * self.encode(x)[0]

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z / self.scaling_factor)


@torch.no_grad()
def measure_scaling_factor(model: KLAutoencoder, batches) -> float:
    """1 / std of the posterior means z_mu over ``batches`` (an iterable of input tensors)."""
    std = torch.cat([model.encode(x)[0].float().flatten() for x in batches]).std().item()
    return 1.0 / max(std, 1e-8)


def _replace_dir(tmp: str, final: str) -> None:
    old = final + ".old"
    if os.path.isdir(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_autoencoder(model: KLAutoencoder, run_dir: str) -> str:
    """Write the trained model (2D: ``run_dir/vae``, 3D: ``run_dir/autoencoder``) whole or not at all."""
    name = "vae" if model.spatial_dims == 2 else "autoencoder"
    final = os.path.join(run_dir, name)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if model.spatial_dims == 2:
        model.net.register_to_config(scaling_factor=model.scaling_factor)
        model.net.save_pretrained(tmp)
    else:
        os.makedirs(tmp)
        atomic_save(model.net.state_dict(), os.path.join(tmp, "model.pt"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({**model.kw, "scaling_factor": model.scaling_factor}, f, indent=2)
    _replace_dir(tmp, final)
    return final


def load_autoencoder(path: str) -> KLAutoencoder:
    """Load what :func:`save_autoencoder` wrote (a run directory, or its ``vae``/``autoencoder`` folder)."""
    for candidate in (os.path.join(path, "autoencoder"), os.path.join(path, "vae"), path):
        config = os.path.join(candidate, "config.json")
        if os.path.isfile(os.path.join(candidate, "model.pt")) and os.path.isfile(config):
            with open(config) as f:
                kw = json.load(f)
            scaling = kw.pop("scaling_factor")
            model = KLAutoencoder(kw, scaling_factor=scaling)
            model.net.load_state_dict(load_checkpoint(os.path.join(candidate, "model.pt")))
            return model
        if not os.path.isfile(os.path.join(candidate, "diffusion_pytorch_model.safetensors")):
            continue
        vae = DiffusersAutoencoderKL.from_pretrained(candidate, use_safetensors=True)
        c = vae.config
        kw = dict(spatial_dims=2, in_channels=c.in_channels, out_channels=c.out_channels,
                  num_channels=list(c.block_out_channels), latent_channels=c.latent_channels,
                  num_res_blocks=c.layers_per_block, attention_levels=[False] * len(c.block_out_channels),
                  norm_num_groups=c.norm_num_groups, with_encoder_nonlocal_attn=c.mid_block_add_attention,
                  with_decoder_nonlocal_attn=c.mid_block_add_attention)
        return KLAutoencoder(kw, scaling_factor=c.scaling_factor, net=vae)
    raise InputError(f"{path}: no saved autoencoder (expected vae/ or autoencoder/ with config.json)")
