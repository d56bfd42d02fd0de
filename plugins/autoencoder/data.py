"""Folders of 3D volumes (NIfTI, TIFF) or 2D images (.npy, .png, .tif, 2D NIfTI), with optional masks.

``data_dir`` is either a folder with ``images/`` (and optionally ``masks/``,
same file names) or a flat folder of images. Items are dicts
``{"image": float32 [C, *S], "mask": float32 [1, *S], "index": int}`` (``mask`` only when
masks exist; :meth:`ImageFolder.case_id` names item ``index``), C = channels (1 for grey volumes, the last axis for RGB
images). Training items are random crops of ``crop_size`` (offsets drawn from
(seed, epoch, index), so a resumed run crops as an uninterrupted one), validation items
centre crops; without ``crop_size`` every file must have the same shape.
Intensities are min-max scaled to [0, 1] per file when ``normalize='minmax'``.
"""

from __future__ import annotations

import math
import os

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from plugins.common.errors import InputError
from plugins.data.volume_io import check_voxels

EXTENSIONS = {
    3: (".nii.gz", ".nii", ".tif", ".tiff"),
    2: (".npy", ".png", ".nii.gz", ".nii", ".tif", ".tiff"),
}


def _has_ext(name: str, exts) -> bool:
    return name.lower().endswith(exts)


def _shape(path: str) -> tuple[int, ...]:
    """Array shape without reading the pixels (NIfTI/npy headers, SimpleITK image information)."""
    low = path.lower()
    if low.endswith((".nii", ".nii.gz")):
        return tuple(int(s) for s in nib.load(path).shape)
    if low.endswith(".npy"):
        return tuple(np.load(path, mmap_mode="r").shape)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    size = tuple(reversed(reader.GetSize()))  # SimpleITK sizes are x, y[, z]; arrays are [z,] y, x
    components = reader.GetNumberOfComponents()
    return size + ((components,) if components > 1 else ())


def read_array(path: str) -> np.ndarray:
    """Pixels as float32 (NIfTI via nibabel, .npy via numpy, TIFF/PNG via SimpleITK); complex, NaN/Inf or
    float32-overflowing values are refused (:func:`plugins.data.volume_io.check_voxels`)."""
    low = path.lower()
    try:
        if low.endswith((".nii", ".nii.gz")):
            data = np.asanyarray(nib.load(path).dataobj)
        elif low.endswith(".npy"):
            data = np.load(path)
        else:
            data = sitk.GetArrayFromImage(sitk.ReadImage(path))
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(f"{path}: cannot read the image ({err})") from None
    check_voxels(path, data)
    return data.astype(np.float32)


def _channels_first(array: np.ndarray, spatial_dims: int, path: str) -> np.ndarray:
    if array.ndim == spatial_dims:
        return array[None]
    if array.ndim == spatial_dims + 1 and array.shape[-1] <= 4:
        return np.moveaxis(array, -1, 0)
    raise InputError(f"{path}: expected a {spatial_dims}D image (optionally with <= 4 channels last), "
                     f"got shape {array.shape}")


def list_images(data_dir: str, spatial_dims: int, mask_dir: str = "") -> tuple[list[str], list[str] | None]:
    """Sorted image paths and matching mask paths (None when there is no mask folder)."""
    if not os.path.isdir(data_dir):
        raise InputError(f"data.data_dir: {data_dir!r} is not a folder")
    images_dir = os.path.join(data_dir, "images")
    image_dir = images_dir if os.path.isdir(images_dir) else data_dir
    exts = EXTENSIONS[spatial_dims]
    names = sorted(n for n in os.listdir(image_dir) if _has_ext(n, exts) and not n.startswith("."))
    if not names:
        raise InputError(f"data.data_dir: no {'/'.join(exts)} files in {image_dir}")
    mask_dir = mask_dir or (os.path.join(data_dir, "masks") if image_dir == images_dir else "")
    if not mask_dir or not os.path.isdir(mask_dir):
        if mask_dir and mask_dir != os.path.join(data_dir, "masks"):
            raise InputError(f"data.mask_dir: {mask_dir!r} is not a folder")
        return [os.path.join(image_dir, n) for n in names], None
    missing = [n for n in names if not os.path.isfile(os.path.join(mask_dir, n))]
    if missing:
        raise InputError(f"data.mask_dir: {mask_dir} lacks masks for {len(missing)} image(s), e.g. {missing[0]}")
    return [os.path.join(image_dir, n) for n in names], [os.path.join(mask_dir, n) for n in names]


def split_files(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Indices (train, val): the last ceil(n * val_fraction) files validate; with one file it does both."""
    n_val = min(n - 1, math.ceil(n * val_fraction)) if n > 1 else 0
    if n_val == 0:
        return list(range(n)), list(range(n))
    return list(range(n - n_val)), list(range(n - n_val, n))


class ImageFolder(Dataset):
    """Images (and masks) of one split; random crops for training, centre crops otherwise."""

    def __init__(self, images: list[str], masks: list[str] | None, spatial_dims: int, crop_size=None,
                 normalize: str = "minmax", random_crop: bool = True, in_channels: int = 1, seed: int = 0):
        self.images, self.masks, self.seed, self.epoch = images, masks, seed, 0
        self.spatial_dims, self.normalize, self.random_crop = spatial_dims, normalize, random_crop
        shapes = {p: _spatial_shape(_shape(p), spatial_dims, p) for p in images}
        if crop_size is None:
            distinct = sorted(set(shapes.values()))
            if len(distinct) > 1:
                first = {}
                for p, s in shapes.items():
                    first.setdefault(s, os.path.basename(p))
                examples = ", ".join(f"{name} {s}" for s, name in list(first.items())[:2])
                raise InputError(f"data.crop_size: the images differ in shape ({len(distinct)} shapes, e.g. "
                                 f"{examples}); set data.crop_size")
            self.crop = distinct[0]
        else:
            crop = [crop_size] * spatial_dims if isinstance(crop_size, int) else list(crop_size)
            if len(crop) != spatial_dims:
                raise InputError(f"data.crop_size: expected {spatial_dims} sizes, got {crop_size!r}")
            for p, s in shapes.items():
                if any(c > d for c, d in zip(crop, s)):
                    raise InputError(f"data.crop_size: {tuple(crop)} is larger than {p} of shape {s}")
            self.crop = tuple(crop)
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.images)

    def case_id(self, i: int) -> str:
        """The file name of item ``i`` without its extension (the per-case table's ``case``)."""
        name = os.path.basename(self.images[i])
        return next(name[:-len(ext)] for ext in (*EXTENSIONS[2], *EXTENSIONS[3], "") if name.lower().endswith(ext))

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader: crops of epoch ``epoch`` (accelerate's ``set_epoch``)."""
        self.epoch = epoch

    def _offsets(self, shape, i: int) -> list[int]:
        if self.random_crop:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            return [int(rng.integers(0, d - c + 1)) for d, c in zip(shape, self.crop)]
        return [(d - c) // 2 for d, c in zip(shape, self.crop)]

    def __getitem__(self, i: int) -> dict:
        path = self.images[i]
        image = _channels_first(read_array(path), self.spatial_dims, path)
        if image.shape[0] != self.in_channels:
            raise InputError(f"{path}: expected {self.in_channels} channel(s) (autoencoder.in_channels), "
                             f"got {image.shape[0]}")
        if self.normalize == "minmax":
            lo, hi = float(image.min()), float(image.max())
            image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        offsets = self._offsets(image.shape[1:], i)
        window = tuple(slice(o, o + c) for o, c in zip(offsets, self.crop))
        item = {"image": torch.from_numpy(np.ascontiguousarray(image[(slice(None),) + window])), "index": i}
        if self.masks is not None:
            mask = read_array(self.masks[i])
            if mask.shape != image.shape[1:]:
                raise InputError(f"{self.masks[i]}: mask shape {mask.shape} differs from image shape "
                                 f"{image.shape[1:]}")
            item["mask"] = torch.from_numpy(np.ascontiguousarray((mask[window] > 0)[None].astype(np.float32)))
        return item


def _spatial_shape(shape: tuple[int, ...], spatial_dims: int, path: str) -> tuple[int, ...]:
    if len(shape) == spatial_dims:
        return shape
    if len(shape) == spatial_dims + 1 and shape[-1] <= 4:
        return shape[:-1]
    raise InputError(f"{path}: expected a {spatial_dims}D image, got shape {shape}")


def build_datasets(data_cfg: dict, spatial_dims: int, in_channels: int, seed: int = 0
                   ) -> tuple[ImageFolder, ImageFolder]:
    """(train, val) datasets of the ``data:`` section."""
    images, masks = list_images(data_cfg["data_dir"], spatial_dims, data_cfg["mask_dir"])
    ImageFolder(images, masks, spatial_dims, data_cfg["crop_size"])  # shapes checked over all files
    train_idx, val_idx = split_files(len(images), data_cfg["val_fraction"])

    def subset(idx, random_crop):
        return ImageFolder([images[i] for i in idx], [masks[i] for i in idx] if masks else None, spatial_dims,
                           data_cfg["crop_size"], data_cfg["normalize"], random_crop, in_channels, seed)

    return subset(train_idx, True), subset(val_idx, False)
