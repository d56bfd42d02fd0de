"""Model pieces of segmentation diffusion: calibration head, classification head, log-sigmas.

The UNet (:class:`~patches.guided_diffusion.SeamUNetModel`) sees ``cat([image, x_t])``
(``concat=image``, [N, M, S, S]; ``x_t`` the noisy mask, [N, 1, S, S] in [-1, 1]) and
predicts the mask channel's noise, one tensor, so upstream losses and samplers work
unchanged. ``attach_segdiff`` adds:

- ``calib_head`` (:class:`CalibrationHead`): a direct mask prediction (logits [N, 1, S, S])
  from the last decoder block's features (tap ``"calib"``): GroupNorm, SiLU, 3x3 conv to
  ``width`` channels, SiLU, 1x1 conv to 1. It stands in for upstream MedSegDiff's "highway"
  (a whole second network) at a small fraction of its parameters (``highway_parameter_counts``);
- with ``use_cls_head``: the bottleneck head ``"cls"`` (:class:`ClassificationHead`,
  logits [N, 2], LGG = 0, HGG = 1) and the learnable log-sigmas ``log_sigma_seg``,
  ``log_sigma_cls`` (``model.loss_parameters``) of uncertainty weighting.

Both heads read the **image pass** only (:func:`image_heads`): the shared UNet run on
``cat([image, 0])`` at the last step ``t = T - 1``, the mask channel zeroed, so no path leads
from ``x_t`` (which at small ``t`` nearly is the answer) to either head. MedSegDiff-V2 gets
the same property from its image-only highway (``c = h[:, :-1]``); here the encoder the
heads train is the denoiser's own, so the classification gradient still meets the
segmentation gradient there (the conflict the seed's stages address). Training, validation
and sampling all read the heads this way: one input distribution for train and test.

``segdiff_forward(model, x_t, t, image, t_image)`` returns the seed's triple
``(seg_out, cls_logits | None, calib_map)``: ``seg_out`` is the UNet output on ``x_t`` (the
predicted noise of the mask channel, [N, 1, S, S]); the other two come from the image pass.
"""

from __future__ import annotations

import torch
from torch import nn

from patches.guided_diffusion import create_seam_model

CALIB_TAP = "calib"
CLS_HEAD = "cls"
LOG_SIGMAS = ("log_sigma_seg", "log_sigma_cls")
NUM_GRADES = 2


class ClassificationHead(nn.Module):
    """Bottleneck [N, C, h, w] -> global average pool -> Linear(C, C/2) -> ReLU -> Dropout(0.3) -> Linear(C/2, 2)."""

    def __init__(self, channels: int, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, channels // 2),
                                 nn.ReLU(), nn.Dropout(dropout), nn.Linear(channels // 2, NUM_GRADES))

    def forward(self, h: torch.Tensor, _ctx=None) -> torch.Tensor:
        return self.net(h)


class CalibrationHead(nn.Module):
    """Decoder features [N, C, S, S] -> mask logits [N, 1, S, S] (C a multiple of 32)."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, width, 3, padding=1),
                                 nn.SiLU(), nn.Conv2d(width, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def bottleneck_channels(model) -> int:
    return int(model.model_channels * model.channel_mult[-1])


def attach_segdiff(model, *, use_cls_head: bool, calib_width: int = 32) -> None:
    """Add the calibration head (and, with ``use_cls_head``, the classification head and log-sigmas)."""
    model.add_feature_tap(CALIB_TAP, ("output", len(model.output_blocks) - 1))
    model.calib_head = CalibrationHead(int(model.model_channels * model.channel_mult[0]), calib_width)
    if use_cls_head:
        model.add_head(CLS_HEAD, ClassificationHead(bottleneck_channels(model)))
        for name in LOG_SIGMAS:
            model.add_loss_parameter(name, 0.0)


def has_cls_head(model) -> bool:
    return CLS_HEAD in model.heads


def image_timesteps(diffusion, n: int, device) -> torch.Tensor:
    """[n] network timesteps of the last original step ``T - 1`` (scaled as upstream does when rescaling)."""
    t = torch.full((n,), diffusion.original_num_steps - 1, device=device)
    return t.float() * (1000.0 / diffusion.original_num_steps) if diffusion.rescale_timesteps else t


def image_heads(model, image: torch.Tensor, t_image: torch.Tensor) -> tuple:
    """``(cls_logits [N, 2] | None, calib_map [N, 1, S, S])`` of the image pass: ``model(0, t_image, concat=image)``.

    ``image`` [N, M, S, S]; ``t_image`` [N] from :func:`image_timesteps`. The mask channel is zeros, so the
    heads see the image and nothing of any mask.
    """
    zeros = image.new_zeros((image.shape[0], 1, *image.shape[2:]))
    model(zeros, t_image, concat=image)
    return model.extras.get(CLS_HEAD), model.calib_head(model.features[CALIB_TAP])


def segdiff_forward(model, x_t: torch.Tensor, timesteps: torch.Tensor, image: torch.Tensor,
                    t_image: torch.Tensor) -> tuple:
    """``(seg_out [N, 1, S, S], cls_logits [N, 2] | None, calib_map [N, 1, S, S])``: the denoiser on ``x_t``,
    the heads on the image pass."""
    seg_out = model(x_t, timesteps, concat=image)
    return (seg_out, *image_heads(model, image, t_image))


def sigmas(model) -> dict:
    """``{"sigma_seg": exp(s_seg), "sigma_cls": exp(s_cls)}`` (empty without the classification head)."""
    if not has_cls_head(model):
        return {}
    return {name.replace("log_", ""): float(model.loss_parameters[name].detach().exp()) for name in LOG_SIGMAS}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def highway_parameter_counts(model_kwargs: dict, num_modalities: int, calib_width: int = 32) -> dict:
    """Parameters of our calibration head against a full second UNet (image -> mask) of the same config."""
    model = create_seam_model(**{**model_kwargs, "in_channels": num_modalities + 1, "out_channels": 1})
    attach_segdiff(model, use_cls_head=False, calib_width=calib_width)
    second = create_seam_model(**{**model_kwargs, "in_channels": num_modalities, "out_channels": 1})
    ours, full = count_parameters(model.calib_head), count_parameters(second)
    return {"calib_head_params": ours, "second_unet_params": full, "fraction": ours / full}
