"""Super-resolution pairs: the embedded writer and the pair dataset reader.

Degradation (documented in ``meta.json``): ``y = downsample_s(G_sigma * x) + n``,
with ``G_sigma`` a Gaussian blur of ``sigma = blur_sigma * scale`` pixels,
``downsample_s`` an ``s x s`` block mean (``s = scale``) and ``n ~ N(0, noise_std^2)``,
clipped to [0, 1]. Layout::

    out_dir/meta.json
    out_dir/{train,val}/hr/NNNNN.npy   float32 [H, W] in [0, 1]
    out_dir/{train,val}/lr/NNNNN.npy   float32 [H/s, W/s]; absent -> unpaired sample

Validation samples are always paired; ``unpaired_fraction`` of the training
samples get no low-resolution file (they train the unconditional prior).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from plugins.common.errors import InputError
from plugins.common.owned_dir import replace_owned_dir

META_FILE = "meta.json"
SPLITS = ("train", "val")


def degrade(hr: np.ndarray, scale: int, rng: np.random.Generator, blur_sigma: float = 0.5,
            noise_std: float = 0.01) -> np.ndarray:
    """[H, W] -> [H/scale, W/scale]: Gaussian blur, block-mean downsample, Gaussian noise, clip."""
    h, w = hr.shape
    blurred = ndimage.gaussian_filter(hr.astype(np.float64), sigma=blur_sigma * scale, mode="reflect")
    low = blurred.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
    low = low + rng.normal(0.0, noise_std, size=low.shape)
    return np.clip(low, 0.0, 1.0).astype(np.float32)


def _check_slices(hr_slices, scale: int) -> list[np.ndarray]:
    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"write_sr_pairs: scale must be a positive integer, got {scale!r}")
    arrays = [np.asarray(s, dtype=np.float32) for s in hr_slices]
    if len(arrays) < 2:
        raise InputError(f"write_sr_pairs: need at least 2 high-resolution slices, got {len(arrays)}")
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != shape or a.shape[0] != a.shape[1]:
            raise InputError(f"write_sr_pairs: slice {i} has shape {a.shape}; expected square 2D slices "
                             f"all of shape {shape}")
        if a.shape[0] % scale:
            raise InputError(f"write_sr_pairs: slice size {a.shape[0]} is not divisible by scale {scale}")
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise InputError(f"write_sr_pairs: slice {i} has values outside [0, 1]")
    return arrays


def write_sr_pairs(hr_slices, out_dir: str, scale: int = 2, seed: int = 0, val_fraction: float = 0.2,
                   unpaired_fraction: float = 0.1, blur_sigma: float = 0.5, noise_std: float = 0.01) -> dict:
    """Write HR slices and their degraded LR versions to ``out_dir``; return the meta dict.

    Written into a temp folder and renamed into place, so a failure leaves nothing behind.
    """
    arrays = _check_slices(hr_slices, scale)
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"write_sr_pairs: val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 <= unpaired_fraction < 1.0:
        raise InputError(f"write_sr_pairs: unpaired_fraction must be in [0, 1), got {unpaired_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(arrays))
    n_val = max(1, int(round(val_fraction * len(arrays))))
    split_of = {int(i): ("val" if k < n_val else "train") for k, i in enumerate(order)}
    train_ids = [i for i in range(len(arrays)) if split_of[i] == "train"]
    n_unpaired = int(round(unpaired_fraction * len(train_ids)))
    unpaired = set(rng.choice(train_ids, size=n_unpaired, replace=False).tolist()) if n_unpaired else set()

    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_sr_")
    try:
        counts = {s: {"paired": 0, "unpaired": 0} for s in SPLITS}
        index = {s: 0 for s in SPLITS}
        for i, hr in enumerate(arrays):
            split = split_of[i]
            name = f"{index[split]:05d}.npy"
            index[split] += 1
            for sub in ("hr", "lr"):
                os.makedirs(os.path.join(tmp, split, sub), exist_ok=True)
            np.save(os.path.join(tmp, split, "hr", name), hr)
            low = degrade(hr, scale, rng, blur_sigma, noise_std)
            if i in unpaired:
                counts[split]["unpaired"] += 1
            else:
                np.save(os.path.join(tmp, split, "lr", name), low)
                counts[split]["paired"] += 1
        meta = {
            "scale": scale, "hr_size": int(arrays[0].shape[0]), "lr_size": int(arrays[0].shape[0] // scale),
            "seed": seed, "counts": counts,
            "degradation": {
                "formula": "y = clip(blockmean_scale(gaussian_blur(x, sigma)) + N(0, noise_std^2), 0, 1)",
                "blur_sigma_pixels": blur_sigma * scale, "downsample": f"block mean {scale}x{scale}",
                "noise_std": noise_std,
            },
        }
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        replace_owned_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(root: str) -> dict:
    path = os.path.join(root, META_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{path}: not found; expected an SR pair folder written by write_sr_pairs "
                         f"(scripts/make_demo_data.py --kind sr)")
    with open(path) as f:
        meta = json.load(f)
    if not isinstance(meta.get("scale"), int) or meta["scale"] < 1:
        raise InputError(f"{path}: field 'scale' must be a positive integer, got {meta.get('scale')!r}")
    return meta


class SRPairDataset(Dataset):
    """Items: ``hr`` float32 [1, H, W], ``lr`` float32 [1, H/s, W/s] (zeros when unpaired),
    ``paired`` bool, ``index`` int. Sizes are checked against ``meta.json``'s scale on load."""

    def __init__(self, root: str, split: str = "train"):
        if split not in SPLITS:
            raise InputError(f"SR split must be one of {SPLITS}, got {split!r}")
        self.meta = read_meta(root)
        self.scale = self.meta["scale"]
        self.hr_dir = os.path.join(root, split, "hr")
        self.lr_dir = os.path.join(root, split, "lr")
        if not os.path.isdir(self.hr_dir):
            raise InputError(f"{self.hr_dir}: not found; expected the {split} high-resolution slices")
        self.names = sorted(n for n in os.listdir(self.hr_dir) if n.endswith(".npy"))
        if not self.names:
            raise InputError(f"{self.hr_dir}: no .npy slices")
        self.hr_size = int(np.load(os.path.join(self.hr_dir, self.names[0]), mmap_mode="r").shape[-1])
        if self.hr_size % self.scale:
            raise InputError(f"{self.hr_dir}/{self.names[0]}: size {self.hr_size} is not divisible by "
                             f"scale {self.scale} of {root}/meta.json")
        self.lr_size = self.hr_size // self.scale
        for name in self.names:
            self._check_shape(os.path.join(self.hr_dir, name), self.hr_size)
            lr_path = os.path.join(self.lr_dir, name)
            if os.path.isfile(lr_path):
                self._check_shape(lr_path, self.lr_size)

    def _check_shape(self, path: str, size: int) -> None:
        shape = np.load(path, mmap_mode="r").shape
        if shape != (size, size):
            raise InputError(f"{path}: shape {shape}, expected ({size}, {size}): high-res {self.hr_size} must be "
                             f"scale {self.scale} (meta.json) x low-res {self.lr_size}")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        hr = np.load(os.path.join(self.hr_dir, name)).astype(np.float32)
        lr_path = os.path.join(self.lr_dir, name)
        paired = os.path.isfile(lr_path)
        lr = np.load(lr_path).astype(np.float32) if paired else np.zeros((self.lr_size, self.lr_size), np.float32)
        return {"hr": torch.from_numpy(hr)[None], "lr": torch.from_numpy(lr)[None],
                "paired": torch.tensor(paired), "index": i}

    def num_paired(self) -> int:
        return sum(os.path.isfile(os.path.join(self.lr_dir, n)) for n in self.names)
