"""Find BraTS subjects and their NIfTI files on disk.

Two layouts are read, ``.nii`` or ``.nii.gz`` in either:

- BraTS 2020: ``DATA/BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii``
  (also ``BraTS20_Validation_XXX``);
- BraTS 2021: ``DATA/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``.

Modality order is fixed: :data:`MODALITIES` = (t1, t1ce, t2, flair); a subset
keeps this order's meaning only through the order the caller passes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from plugins.common.errors import InputError

#: Fixed channel order of a full 4-modality image.
MODALITIES = ("t1", "t1ce", "t2", "flair")
SEG = "seg"
SUBJECT_PATTERN = re.compile(r"^BraTS(20_(Training|Validation)_\d+|2021_\d+)$")
EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Subject:
    """One subject folder: ``name`` (e.g. ``BraTS20_Training_001``) and ``files[kind] -> path``."""

    name: str
    folder: str
    files: dict = field(hash=False, compare=False)


def check_modalities(modalities, flag: str = "--modalities") -> tuple:
    """Validate a modality subset (names from :data:`MODALITIES`, no repeats; refusals name ``flag``)."""
    if isinstance(modalities, str):
        modalities = [m for m in modalities.replace(",", " ").split() if m]
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if not modalities or unknown or len(set(modalities)) != len(modalities):
        raise InputError(f"{flag}: got {','.join(modalities) or '(none)'}; expected distinct names "
                         f"from {','.join(MODALITIES)}")
    return modalities


def _find_file(folder: str, name: str, kind: str) -> str:
    found = [os.path.join(folder, f"{name}_{kind}{ext}") for ext in EXTENSIONS]
    found = [p for p in found if os.path.isfile(p)]
    if not found:
        raise InputError(f"{os.path.join(folder, name + '_' + kind)}.nii[.gz]: missing {kind} file of subject {name}")
    if len(found) > 1:
        raise InputError(f"{found[0]}: both .nii and .nii.gz exist for {kind} of subject {name}; keep one")
    return found[0]


def discover_subjects(data_dir: str, modalities=MODALITIES, with_seg: bool = True) -> list[Subject]:
    """All subject folders under ``data_dir``, sorted by name, each with every requested file.

    Raises :class:`InputError` for a missing folder, a folder with no subject
    folders, or a subject that lacks one of ``modalities`` (or ``seg``).
    """
    if not data_dir or not os.path.isdir(data_dir):
        raise InputError(f"--data_dir: {data_dir!r} is not a directory")
    names = sorted(n for n in os.listdir(data_dir)
                   if SUBJECT_PATTERN.match(n) and os.path.isdir(os.path.join(data_dir, n)))
    if not names:
        raise InputError(f"{data_dir}: no BraTS subject folders (expected BraTS20_Training_XXX/ "
                         f"or BraTS2021_XXXXX/ holding <name>_{{t1,t1ce,t2,flair,seg}}.nii[.gz])")
    kinds = tuple(modalities) + ((SEG,) if with_seg else ())
    subjects = []
    for name in names:
        folder = os.path.join(data_dir, name)
        subjects.append(Subject(name, folder, {k: _find_file(folder, name, k) for k in kinds}))
    return subjects
