"""A synthetic BraTS-like cohort built from a real brain: the MNI152 2009a template in nilearn.

Source: ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` read from the installed
nilearn package folder (no download, no nilearn import). The template is skull-stripped, so
brain = ``t1 > 0``; tissue fractions are GM, WM and CSF = ``clip(brain - GM - WM, 0, 1)``.

Per subject (``numpy.random.default_rng([seed, index])``, so a seed gives the same cohort):

- geometry: output grid of ``shape`` voxels over a BraTS field of view (240 x 240 x 155 mm),
  a random affine (rotation <= 6 deg, scale 0.92-1.08, shift <= 4 mm) and a smooth random
  deformation (<= ~3 mm); the lesion pushes tissue outwards (mass effect);
- lesion: an irregular ellipsoid centred in white matter, radius ``r`` normalised to 1 at the
  tumour edge. HGG: necrotic core (label 1, ``r < c``), enhancing rim (label 4, ``c <= r < 1``),
  oedema (label 2) beyond it, reaching further along white matter. LGG: non-enhancing tumour
  (label 1, ``r < 1``) and thinner oedema, no label 4. The lesion spans part of the brain only,
  so every subject has healthy slices;
- contrast: class means per modality (table :data:`CLASS_MEANS`: T1 CSF dark; T2 CSF bright;
  FLAIR CSF dark, oedema bright; T1ce enhancing rim bright) jittered +-10%, a gamma 0.8-1.25,
  a multiplicative bias field (+-~20%), Rician noise (1.5-3.5% of the scale), background 0,
  stored as int16 like scanner data; seg as uint8.

Grades: ``max(1, round(N / 5))`` LGG subjects (N >= 2), the rest HGG (about 4:1 as in BraTS 2020),
assigned in a seeded random order.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass

import nibabel
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from plugins.common.errors import InputError
from plugins.data.brats_layout import MODALITIES

MNI_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
FIELD_OF_VIEW_MM = (240.0, 240.0, 155.0)
DEFAULT_SHAPE = (120, 120, 78)
CLASSES = ("csf", "gm", "wm", "necrosis", "solid", "oedema", "enhancing")
#: Relative mean intensity of each class (columns as :data:`CLASSES`) per modality.
CLASS_MEANS = {
    "t1":    (0.25, 0.58, 0.82, 0.22, 0.45, 0.50, 0.55),
    "t1ce":  (0.25, 0.60, 0.82, 0.22, 0.47, 0.50, 1.00),
    "t2":    (1.00, 0.62, 0.42, 0.95, 0.85, 0.82, 0.70),
    "flair": (0.12, 0.62, 0.48, 0.45, 0.85, 0.95, 0.80),
}
#: BraTS label of each lesion class.
LESION_LABELS = {"necrosis": 1, "solid": 1, "oedema": 2, "enhancing": 4}


def mni_template_dir() -> str:
    """The folder inside the installed nilearn package that holds the MNI152 files."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("nilearn is not installed; it ships the MNI152 template the demo cohort is built from")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


@dataclass
class Template:
    """MNI152 tissue fractions [3 (csf, gm, wm), X, Y, Z] in [0, 1], 1 mm voxels, and the brain centre."""

    tissue: np.ndarray
    centre: np.ndarray


def load_template() -> Template:
    folder = mni_template_dir()
    maps = {}
    for key, name in MNI_FILES.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise InputError(f"{path}: MNI152 file missing from the nilearn package")
        maps[key] = np.asanyarray(nibabel.load(path).dataobj).astype(np.float32) / 255.0
    brain = (maps["t1"] > 0).astype(np.float32)
    gm, wm = maps["gm"], maps["wm"]
    total = np.maximum(gm + wm, 1.0)
    gm, wm = gm / total, wm / total
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    idx = np.argwhere(maps["t1"] > 0)
    centre = (idx.min(0) + idx.max(0)) / 2.0
    return Template(np.stack([csf, gm, wm]), centre.astype(np.float32))


def _bspline_matrix(n: int, coarse: int) -> np.ndarray:
    """[n, coarse + 3] cubic B-spline weights mapping a coarse grid (one knot beyond each end) to n points."""
    x = np.linspace(0.0, coarse, n)[:, None] + 1.0 - np.arange(coarse + 3)[None, :]
    t = np.abs(x)
    w = np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return (w / np.sqrt((w ** 2).sum(1, keepdims=True))).astype(np.float32)


def smooth_field(rng, shape, coarse=4, amplitude=1.0) -> np.ndarray:
    """A smooth random field of ``shape`` with std ``amplitude`` everywhere.

    Knots N(0, amplitude^2) on a (``coarse`` + 3)^3 grid, combined by separable cubic B-spline
    weights normalised to unit sum of squares, so the field is C2 and its variance is exact.
    """
    grid = rng.normal(0.0, amplitude, size=(coarse + 3,) * 3).astype(np.float32)
    mx, my, mz = (_bspline_matrix(n, coarse) for n in shape)
    return np.einsum("ai,bj,ck,ijk->abc", mx, my, mz, grid, optimize=True)


def _rotation(rng, max_deg=6.0) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def synthesise_subject(template: Template, rng, grade: int, shape=DEFAULT_SHAPE):
    """One subject: ``({modality: int16 [X, Y, Z]}, seg uint8 [X, Y, Z], affine 4x4)``; grade 1 HGG, 0 LGG."""
    shape = tuple(int(s) for s in shape)
    spacing = np.array(FIELD_OF_VIEW_MM) / np.array(shape)
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"))                       # [3, X, Y, Z] mm
    matrix = (_rotation(rng) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    q = np.einsum("ij,jxyz->ixyz", matrix, p)
    q += rng.uniform(-4, 4, 3).astype(np.float32)[:, None, None, None]
    for i in range(3):
        q[i] += smooth_field(rng, shape, coarse=5, amplitude=2.0)
    q += template.centre[:, None, None, None]                            # template voxels (1 mm)

    # lesion centre in white matter of the cerebrum, away from the top and bottom slices
    wm = template.tissue[2]
    zlo, zhi = int(template.centre[2] - 25), int(template.centre[2] + 35)
    candidates = np.argwhere(wm[:, :, zlo:zhi] > 0.85) + np.array([0, 0, zlo])
    centre = candidates[rng.integers(len(candidates))].astype(np.float32)
    hgg = grade == 1
    radius = rng.uniform(9.0, 16.0) if hgg else rng.uniform(8.0, 14.0)
    axes_scale = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    rot = _rotation(rng, 45.0).astype(np.float32)
    rel = np.einsum("ij,jxyz->ixyz", rot, q - centre[:, None, None, None]) / (radius * axes_scale[:, None, None, None])
    r = np.sqrt((rel ** 2).sum(0)) * (1.0 + smooth_field(rng, shape, coarse=6, amplitude=0.15))

    # mass effect: sample tissue nearer the lesion centre, pushing it outwards
    push = 1.0 - 0.6 * np.exp(-0.5 * r ** 2)
    src = centre[:, None, None, None] + (q - centre[:, None, None, None]) * push
    tissue = np.stack([ndimage.map_coordinates(t, src, order=1, mode="constant", cval=0.0) for t in template.tissue])
    brain = tissue.sum(0)
    inside = brain > 0.5

    seg = np.zeros(shape, np.uint8)
    reach = rng.uniform(0.5, 1.0) if hgg else rng.uniform(0.2, 0.6)
    oedema = (r >= 1.0) & (r < 1.0 + reach * (0.3 + 0.9 * tissue[2])) & inside
    seg[oedema] = 2
    if hgg:
        core = rng.uniform(0.35, 0.6)
        seg[(r < 1.0) & inside] = 4
        seg[(r < core) & inside] = 1
        lesion_classes = {"necrosis": seg == 1, "oedema": seg == 2, "enhancing": seg == 4}
    else:
        seg[(r < 1.0) & inside] = 1
        lesion_classes = {"solid": seg == 1, "oedema": seg == 2}

    weights = {c: np.zeros(shape, np.float32) for c in CLASSES}
    for name, mask in lesion_classes.items():
        weights[name] = ndimage.gaussian_filter(mask.astype(np.float32), 0.6)
    lesion = sum(weights[c] for c in LESION_LABELS)
    healthy = np.clip(1.0 - lesion, 0.0, 1.0)
    for k, name in enumerate(("csf", "gm", "wm")):
        weights[name] = tissue[k] * healthy
    for name in LESION_LABELS:
        weights[name] *= brain

    texture = 1.0 + 0.08 * smooth_field(rng, shape, coarse=12, amplitude=1.0) * np.minimum(lesion, 1.0)
    scale = rng.uniform(800.0, 1600.0)
    volumes = {}
    for modality in MODALITIES:
        means = np.array(CLASS_MEANS[modality]) * rng.uniform(0.9, 1.1, len(CLASSES))
        x = sum(weights[c] * float(m) for c, m in zip(CLASSES, means)) * texture
        x = np.clip(x, 0.0, None) ** rng.uniform(0.8, 1.25)
        x *= np.exp(smooth_field(rng, shape, coarse=3, amplitude=0.1))
        sigma = rng.uniform(0.015, 0.035)
        noisy = np.hypot(x + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
        volumes[modality] = np.where(inside, np.rint(noisy * scale), 0).clip(0, 32767).astype(np.int16)
    seg[~inside] = 0
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2.0
    return volumes, seg, affine


def cohort_grades(num_subjects: int, seed: int) -> list[int]:
    """Grades of the cohort (1 HGG, 0 LGG): ``max(1, round(N / 5))`` LGG when N >= 2, seeded order."""
    n_lgg = max(1, round(num_subjects / 5)) if num_subjects >= 2 else 0
    grades = np.array([0] * n_lgg + [1] * (num_subjects - n_lgg))
    return np.random.default_rng(seed).permutation(grades).tolist()


def subject_name(index: int, year: int = 2020) -> str:
    """``BraTS20_Training_001`` (2020 layout) or ``BraTS2021_00000`` (2021 layout) for 0-based ``index``."""
    return f"BraTS20_Training_{index + 1:03d}" if year == 2020 else f"BraTS2021_{index:05d}"


def iter_cohort(num_subjects: int = 10, seed: int = 0, shape=DEFAULT_SHAPE, progress: bool = True, year: int = 2020):
    """Yield ``(name, grade, volumes, seg, affine)`` per subject (see :func:`synthesise_subject`)."""
    if num_subjects < 1:
        raise InputError(f"--num_subjects: got {num_subjects}; expected >= 1")
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"--shape: got {tuple(shape)}; expected three sizes >= 16, e.g. 120,120,78")
    template = load_template()
    grades = cohort_grades(num_subjects, seed)
    for i in tqdm(range(num_subjects), desc="demo subjects", disable=not progress):
        volumes, seg, affine = synthesise_subject(template, np.random.default_rng([seed, i]), grades[i], shape)
        yield subject_name(i, year), grades[i], volumes, seg, affine


def write_subject(folder: str, name: str, volumes: dict, seg: np.ndarray, affine: np.ndarray,
                  extension: str = ".nii.gz") -> None:
    """Write ``folder/name/name_{t1,t1ce,t2,flair,seg}<extension>``."""
    target = os.path.join(folder, name)
    os.makedirs(target, exist_ok=True)
    for kind, data in list(volumes.items()) + [("seg", seg)]:
        nibabel.save(nibabel.Nifti1Image(data, affine), os.path.join(target, f"{name}_{kind}{extension}"))


def write_cohort(folder: str, num_subjects: int = 10, seed: int = 0, shape=DEFAULT_SHAPE, year: int = 2020,
                 extension: str = ".nii.gz", on_subject=None, progress: bool = True) -> dict:
    """Write a cohort in the BraTS ``year`` layout plus ``name_mapping.csv``; return ``{name: grade}``.

    ``on_subject(name, grade, volumes, seg)`` is called for each subject (e.g. to collect slices).
    """
    grades = {}
    for name, grade, volumes, seg, affine in iter_cohort(num_subjects, seed, shape, progress, year):
        write_subject(folder, name, volumes, seg, affine, extension)
        if on_subject is not None:
            on_subject(name, grade, volumes, seg)
        grades[name] = grade
    write_name_mapping(os.path.join(folder, "name_mapping.csv"), grades)
    return grades


def write_name_mapping(path: str, grades: dict) -> None:
    """BraTS-style ``name_mapping.csv`` with columns ``Grade`` and ``BraTS_2020_subject_ID``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Grade", "BraTS_2020_subject_ID"])
        for name, grade in grades.items():
            writer.writerow(["HGG" if grade == 1 else "LGG", name])
