"""Read one subject's NIfTI volumes with nibabel and refuse bad ones in one line.

Each refusal names the file: unreadable NIfTI, a non-3D volume, complex or non-numeric voxels,
NaN/Inf voxels, values that overflow float32, a constant (e.g. all-zero) modality, a shape
different from its siblings', seg labels outside :data:`BRATS_LABELS`.
"""

from __future__ import annotations

import nibabel
import numpy as np

from plugins.common.errors import InputError
from plugins.data.brats_layout import SEG, Subject

#: BraTS 2020/2021 labels: 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing.
BRATS_LABELS = (0, 1, 2, 4)


def read_nifti(path: str) -> np.ndarray:
    """The voxel array of ``path`` (scaling applied), shape [X, Y, Z]; axis 2 is axial in BraTS."""
    try:
        data = np.asanyarray(nibabel.load(path).dataobj)
    except Exception as err:  # nibabel raises many types for corrupt / truncated files
        raise InputError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    check_voxels(path, data)
    return data


def check_voxels(path: str, data: np.ndarray) -> None:
    """Refuse complex, non-numeric, NaN/Inf and float32-overflowing voxels, naming ``path``."""
    if data.dtype.kind == "c":
        raise InputError(f"{path}: complex-valued voxels ({data.dtype}); expected real intensities")
    if data.dtype.kind not in "fiub":
        raise InputError(f"{path}: voxels of type {data.dtype}; expected real numbers")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise InputError(f"{path}: {bad} NaN/Inf voxels; expected finite values")
        peak = float(np.abs(data).max()) if data.size else 0.0
        if peak > np.finfo(np.float32).max:
            raise InputError(f"{path}: values up to {peak:.3g} overflow float32 (max {np.finfo(np.float32).max:.3g}); "
                             "rescale the volume")


def check_not_constant(path: str, data: np.ndarray) -> None:
    """Refuse an image whose voxels are all equal (an all-zero or blank modality)."""
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"{path}: every voxel is {lo:g} (a blank modality); expected an image")


def check_seg_labels(path: str, seg: np.ndarray, allowed=BRATS_LABELS) -> np.ndarray:
    """``seg`` as uint8 after checking every value is an integer in ``allowed``."""
    rounded = np.rint(seg) if seg.dtype.kind == "f" else seg
    if seg.dtype.kind == "f" and not np.array_equal(rounded, seg):
        raise InputError(f"{path}: non-integer seg labels; expected labels in {set(allowed)}")
    lo, hi = int(rounded.min()), int(rounded.max())
    if lo < 0 or hi > 255:
        values = [v for v in (lo, hi) if v not in allowed]
    else:
        counts = np.bincount(rounded.astype(np.int64, copy=False).ravel(), minlength=hi + 1)
        values = [v for v in np.flatnonzero(counts).tolist() if v not in allowed]
    if values:
        raise InputError(f"{path}: unexpected seg labels {values}; expected labels in {set(allowed)}")
    return rounded.astype(np.uint8)


def read_subject(subject: Subject, modalities, with_seg: bool = True):
    """``(image [C, X, Y, Z] float32, seg [X, Y, Z] uint8 or None)`` with every check applied."""
    channels, shape, first = [], None, None
    for kind in tuple(modalities) + ((SEG,) if with_seg else ()):
        path = subject.files[kind]
        data = read_nifti(path)
        if shape is None:
            shape, first = data.shape, path
        elif data.shape != shape:
            raise InputError(f"{path}: shape {tuple(data.shape)} differs from its siblings' "
                             f"{tuple(shape)} ({first})")
        if kind == SEG:
            return np.stack(channels), check_seg_labels(path, data)
        check_not_constant(path, data)
        channels.append(data.astype(np.float32, copy=False))
    return np.stack(channels), None
