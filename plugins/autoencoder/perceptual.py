"""MONAI ``PerceptualLoss`` from local weights only: refuse at start-up rather than download.

Pretrained perceptual networks cannot be downloaded on an offline machine, and
random weights are no perceptual metric, so ``perceptual_weight > 0`` needs
``perceptual.weights``:

- ``medicalnet_resnet10_23datasets``, ``medicalnet_resnet50_23datasets`` (3D,
  ``is_fake_3d: false``) and ``radimagenet_resnet50`` (2D, or 3D with
  ``is_fake_3d: true``): a local torch-hub folder as MONAI's ``cache_dir``, i.e.
  one that holds ``Project-MONAI_perceptual-models_main/`` (the hub repository)
  and the network's checkpoint, copied from a machine where
  ``PerceptualLoss(..., cache_dir=FOLDER)`` ran once. Loaded with HF_HUB_OFFLINE=1.
- ``resnet50``: a torchvision ResNet-50 state-dict file (MONAI's
  ``pretrained_path``); needs torchvision.
- ``alex``, ``vgg``, ``squeeze`` (LPIPS) fetch ImageNet backbones through
  torchvision downloads, so they are refused.
"""

from __future__ import annotations

import os
import warnings

import torch
from monai.losses import PerceptualLoss
from monai.losses.perceptual import PerceptualNetworkType

from plugins.common.errors import InputError

HUB_REPO_FOLDER = "Project-MONAI_perceptual-models_main"
_FIELD = "autoencoder.training.perceptual"
_HUB_NETWORKS = ("medicalnet_resnet10_23datasets", "medicalnet_resnet50_23datasets", "radimagenet_resnet50")


def _how_to(network: str) -> str:
    if network == "resnet50":
        return f"set {_FIELD}.weights to a torchvision ResNet-50 state-dict file (needs torchvision)"
    return (f"set {_FIELD}.weights to a local torch-hub folder holding {HUB_REPO_FOLDER}/ and the "
            f"{network} checkpoint (copy the folder MONAI's PerceptualLoss(cache_dir=...) filled on a "
            f"machine with internet access)")


def build_perceptual_loss(spatial_dims: int, weight: float, pcfg: dict):
    """The perceptual loss module, or None when ``weight == 0``; InputError when its weights are not local."""
    if weight == 0:
        return None
    network = pcfg["network"]
    supported = (*_HUB_NETWORKS, "resnet50")
    if network not in list(PerceptualNetworkType):
        raise InputError(f"{_FIELD}.network: expected one of {list(supported)}, got {network!r}")
    if network not in supported:
        raise InputError(f"{_FIELD}.network: {network!r} (LPIPS) downloads ImageNet backbones through "
                         f"torchvision; use one of {list(supported)} with local weights, or perceptual_weight: 0")
    weights = pcfg["weights"]
    if not weights:
        raise InputError(f"autoencoder.training.perceptual_weight={weight} needs pretrained {network} weights, "
                         f"which cannot be downloaded here: {_how_to(network)}; or set perceptual_weight: 0")
    if not os.path.exists(weights):
        raise InputError(f"{_FIELD}.weights: {weights!r} does not exist")
    if "medicalnet_" in network and (spatial_dims != 3 or pcfg["is_fake_3d"]):
        raise InputError(f"{_FIELD}.network: {network} needs spatial_dims 3 and is_fake_3d false")
    if network == "resnet50":
        if not os.path.isfile(weights):
            raise InputError(f"{_FIELD}.weights: resnet50 expects a state-dict file, got folder {weights!r}")
        try:
            import torchvision  # noqa: F401
        except ImportError:
            raise InputError(f"{_FIELD}.network: resnet50 needs torchvision, which is not installed; "
                             f"use one of {list(_HUB_NETWORKS)}") from None
        kwargs = dict(pretrained=True, pretrained_path=weights)
    else:
        if not os.path.isdir(os.path.join(weights, HUB_REPO_FOLDER)):
            raise InputError(f"{_FIELD}.weights: {weights!r} has no {HUB_REPO_FOLDER}/; {_how_to(network)}")
        kwargs = dict(cache_dir=weights)
    previous, hub_dir = os.environ.get("HF_HUB_OFFLINE"), torch.hub.get_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting cache_dir")  # restored below
            loss = PerceptualLoss(spatial_dims=spatial_dims, network_type=network, is_fake_3d=pcfg["is_fake_3d"],
                                  fake_3d_ratio=pcfg["fake_3d_ratio"], **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to load local weights is a bad input
        raise InputError(f"{_FIELD}.weights: cannot load {network} from {weights!r} offline "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    finally:
        torch.hub.set_dir(hub_dir)  # MONAI sets it globally to cache_dir
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    return loss.eval().requires_grad_(False)
