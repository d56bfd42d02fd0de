"""Backbone registry: a name and a YAML parameter block -> a denoiser.

YAML shape (one block per backbone, keys are the upstream constructor's)::

    unet:   {block_out_channels: [64, 128, 128], layers_per_block: 2, ...}   # diffusers UNet2DModel
    dit:    {num_layers: 6, num_attention_heads: 4, attention_head_dim: 32, patch_size: 2}
    hybrid: {block_out_channels: [64, 128], mid_transformer_layers: 2, ...}

``sample_size``, ``in_channels`` and ``out_channels`` come from the VAE (latent
size, ``2 * latent_channels`` with the concatenated condition, ``latent_channels``);
a block that sets ``in_channels``/``out_channels`` must agree with them.
"""

from __future__ import annotations

import inspect
import os

import torch
import yaml
# ModelMixin is looked up in this module by diffusers' pipeline loader (the component's base class).
from diffusers import DiTTransformer2DModel, ModelMixin, UNet2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from plugins.backbones.hybrid import HybridUNet2DModel
from plugins.common.errors import InputError
from plugins.common.yaml_io import safe_load_unique


class SRDiTTransformer2DModel(DiTTransformer2DModel):
    """``DiTTransformer2DModel`` with one fixed class label, called as ``model(sample, timestep)``."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, return_dict: bool = True):
        labels = torch.zeros(sample.shape[0], dtype=torch.long, device=sample.device)
        out = super().forward(sample, timestep=timestep, class_labels=labels, return_dict=False)[0]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


#: name -> (model class, parameters fixed by the registry).
BACKBONES = {
    "unet": (UNet2DModel, {}),
    "dit": (SRDiTTransformer2DModel, {"num_embeds_ada_norm": 1}),
    "hybrid": (HybridUNet2DModel, {}),
}
DEFAULT_BACKBONE = "unet"
_FROM_VAE = ("sample_size", "in_channels", "out_channels")


def check_backbone_name(name: str) -> str:
    if name not in BACKBONES:
        raise InputError(f"--backbone: unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return name


def load_backbone_params(path: str, name: str, flag: str = "--backbone_config") -> dict:
    """The ``name`` block of the YAML file ``path`` given by ``flag`` (refused with one line when missing or
    malformed)."""
    check_backbone_name(name)
    if not os.path.isfile(path):
        raise InputError(f"{flag}: {path} not found; expected a YAML file with a block per backbone "
                         f"({', '.join(BACKBONES)})")
    with open(path) as f:
        try:
            doc = safe_load_unique(f) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or name not in doc or not isinstance(doc[name] or {}, dict):
        found = ", ".join(sorted(map(str, doc))) if isinstance(doc, dict) and doc else "none"
        raise InputError(f"{path}: expected a '{name}:' block of constructor parameters for --backbone {name} "
                         f"(blocks found: {found}; write '{name}: {{}}' for the constructor's defaults)")
    return dict(doc[name] or {})


def build_backbone(name: str, latent_channels: int, latent_size: int, params: dict,
                   source: str = "backbone") -> ModelMixin:
    """Denoiser for ``[B, 2*latent_channels, latent_size, latent_size]`` -> ``[B, latent_channels, ...]``."""
    cls, fixed = BACKBONES[check_backbone_name(name)]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(f"{source}: unknown {name} parameter(s) {unknown}; {cls.__name__} takes {sorted(allowed)}")
    expected = {"in_channels": 2 * latent_channels, "out_channels": latent_channels}
    for key, want in expected.items():
        if key in params and params[key] != want:
            raise InputError(f"{source}: {name} {key} {params[key]} does not fit the VAE's latent_channels "
                             f"{latent_channels} (expected {key} {want}: noisy latent + condition latent in, "
                             f"velocity out)")
    if "sample_size" in params and params["sample_size"] != latent_size:
        raise InputError(f"{source}: {name} sample_size {params['sample_size']} does not fit the VAE latent size "
                         f"{latent_size}")
    kwargs = {**params, **fixed, "sample_size": latent_size, **expected}
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    except (ValueError, TypeError, AssertionError) as err:
        raise InputError(f"{source}: {name} parameters rejected by {cls.__name__}: {err}") from None


def check_denoiser_fits(denoiser, latent_channels: int, source: str = "denoiser") -> None:
    """Refuse a denoiser whose channels do not fit ``latent_channels`` (names both numbers)."""
    cfg = denoiser.config
    out_channels = cfg.out_channels if cfg.out_channels is not None else cfg.in_channels
    if cfg.in_channels != 2 * latent_channels or out_channels != latent_channels:
        raise InputError(f"{source}: denoiser takes {cfg.in_channels} channels in and {out_channels} out, which does "
                         f"not fit the VAE's latent_channels {latent_channels} (expected {2 * latent_channels} in, "
                         f"{latent_channels} out)")


def output_layer_weight(model) -> torch.nn.Parameter:
    """Weight of the denoiser's last layer (where adaptive loss weights compare gradient norms)."""
    if isinstance(model, DiTTransformer2DModel):
        return model.proj_out_2.weight
    return model.conv_out.weight


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


#: CPU-sized parameters of each backbone, matched within 10% (about 0.18 M each), for the quick
#: reproduction and the tests; :data:`TINY_SEED_RATIO_BACKBONES` puts the DiT at seed 004's 2.5 x.
TINY_BACKBONES = {
    "unet": dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                 down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"]),
    "dit": dict(num_layers=3, num_attention_heads=3, attention_head_dim=16, patch_size=2),
    "hybrid": dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, mid_transformer_layers=3,
                   mid_attention_heads=2),
}
TINY_SEED_RATIO_BACKBONES = {**TINY_BACKBONES, "dit": {**TINY_BACKBONES["dit"], "num_layers": 8}}
