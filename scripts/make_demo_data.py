"""Build the embedded demo data sets (no download; the brain comes from nilearn's MNI152 files).

    python scripts/make_demo_data.py --out_dir data/demo [--num_subjects 10] [--seed 0] [--kind all]

``--kind`` brats | filaments | sr | all (default all) writes:

- ``OUT/brats/``: BraTS-2020-layout cohort ``BraTS20_Training_XXX/BraTS20_Training_XXX_{t1,t1ce,t2,flair,seg}.nii.gz``
  and ``name_mapping.csv`` (``Grade``, ``BraTS_2020_subject_ID``); ``--num_subjects`` subjects of
  ``--shape`` voxels (default 10 of 120x120x78, half BraTS resolution, ~2 s each; ``--shape 240,240,155``
  gives BraTS size). About 4:1 HGG:LGG. See :mod:`plugins.data.demo_cohort`.
- ``OUT/filaments/``: ``--num_filament_volumes`` sparse 3D filament volumes with masks
  (:func:`plugins.data.filaments.write_filament_set`).
- ``OUT/sr/``: super-resolution pairs (:func:`plugins.data.sr_pairs.write_sr_pairs`) from every 4th brain
  slice of the cohort's t1, t2 and flair, normalised to [0, 1] and resized to ``--sr_size``.

Each set is written to a temporary folder and renamed into place with a manifest of its files; an
existing set is replaced only when every file in it is one this tool wrote (else refused up front,
nothing changed). The same seed gives the same data.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np

from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser
from plugins.common.owned_dir import check_replaceable, replace_owned_dir
from plugins.data.demo_cohort import DEFAULT_SHAPE, write_cohort
from plugins.data.slice_preprocess import SliceSettings, volume_to_slices

KINDS = ("brats", "filaments", "sr", "all")
DEFAULTS = dict(
    out_dir="",
    num_subjects=10,
    seed=0,
    kind="all",
    shape=",".join(map(str, DEFAULT_SHAPE)),
    num_filament_volumes=8,
    filament_shape="64,64,64",
    sr_size=64,
    sr_scale=2,
    sr_every=4,
)
HELP = dict(
    out_dir="folder to write the sets into",
    num_subjects="subjects of the BraTS-layout cohort",
    seed="random seed (the same seed gives the same data)",
    kind="set to write: brats, filaments, sr or all",
    shape="cohort volume shape x,y,z, voxels",
    num_filament_volumes="filament volumes to write",
    filament_shape="filament volume shape x,y,z, voxels",
    sr_size="side of the high-resolution SR slices, pixels",
    sr_scale="SR downscaling factor (low-res side = sr_size / sr_scale)",
    sr_every="take every N-th brain slice for the SR pairs",
)


def _sizes(text: str, flag: str) -> tuple:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 16:
        raise InputError(f"--{flag}: got {text!r}; expected three sizes >= 16 like 120,120,78")
    return sizes


def sr_slices(volumes: dict, seg: np.ndarray, size: int, every: int) -> list[np.ndarray]:
    """Every ``every``-th brain slice (>= 30% brain) of t1, t2 and flair as [size, size] float32 in [0, 1]."""
    settings = SliceSettings(image_size=size, modalities=("t1", "t2", "flair"), min_brain_fraction=0.3)
    image = np.stack([volumes[m].astype(np.float32) for m in settings.modalities])
    slices, _ = volume_to_slices(image, seg, settings)
    return [np.ascontiguousarray(s) for block in slices[::every] for s in block[:-1]]


def build_cohort(args, out_dir: str, want_brats: bool, want_sr: bool) -> list[np.ndarray]:
    """Write the cohort (if ``want_brats``) and return the SR slices (if ``want_sr``)."""
    shape = _sizes(args.shape, "shape")
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=".tmp_brats_")
    hr = []

    def collect(name, grade, volumes, seg):
        if want_sr:
            hr.extend(sr_slices(volumes, seg, args.sr_size, args.sr_every))

    try:
        grades = write_cohort(tmp, args.num_subjects, args.seed, shape, on_subject=collect)
        if want_brats:
            replace_owned_dir(tmp, os.path.join(out_dir, "brats"))
            n_hgg = sum(grades.values())
            print(f"brats: {len(grades)} subjects ({n_hgg} HGG, {len(grades) - n_hgg} LGG) of {shape} voxels "
                  f"in {os.path.join(out_dir, 'brats')}")
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return hr


def build_filaments(args, out_dir: str) -> None:
    from plugins.data.filaments import write_filament_set

    tmp = tempfile.mkdtemp(dir=out_dir, prefix=".tmp_filaments_")
    try:
        paths = write_filament_set(tmp, num_volumes=args.num_filament_volumes,
                                   shape=_sizes(args.filament_shape, "filament_shape"), seed=args.seed)
        replace_owned_dir(tmp, os.path.join(out_dir, "filaments"))
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    print(f"filaments: {len(paths)} volumes in {os.path.join(out_dir, 'filaments')}")


def build_sr(args, out_dir: str, hr: list) -> None:
    from plugins.data.sr_pairs import write_sr_pairs

    meta = write_sr_pairs(hr, os.path.join(out_dir, "sr"), scale=args.sr_scale, seed=args.seed)
    print(f"sr: {len(hr)} slices of {args.sr_size}px, scale {meta['scale']}, in {os.path.join(out_dir, 'sr')}")


def main(argv=None) -> None:
    args = make_parser(__doc__.splitlines()[0], DEFAULTS, phrases=(HELP,)).parse_args(argv)
    if not args.out_dir:
        raise InputError("--out_dir: required (the folder to write the demo sets into, e.g. data/demo)")
    if args.kind not in KINDS:
        raise InputError(f"--kind: got {args.kind!r}; expected one of {', '.join(KINDS)}")
    if args.sr_size < 8 or args.sr_size % args.sr_scale or args.sr_every < 1:
        raise InputError(f"--sr_size/--sr_scale/--sr_every: got {args.sr_size}/{args.sr_scale}/{args.sr_every}; "
                         "expected sr_size >= 8 divisible by sr_scale, sr_every >= 1")
    kinds = ("brats", "filaments", "sr") if args.kind == "all" else (args.kind,)
    if os.path.lexists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise InputError(f"--out_dir: {args.out_dir} exists and is not a folder")
    for kind in kinds:
        check_replaceable(os.path.join(args.out_dir, kind))
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out_dir: {args.out_dir} cannot be created ({err.strerror})") from None
    if "brats" in kinds or "sr" in kinds:
        hr = build_cohort(args, args.out_dir, "brats" in kinds, "sr" in kinds)
        if "sr" in kinds:
            build_sr(args, args.out_dir, hr)
    if "filaments" in kinds:
        build_filaments(args, args.out_dir)


if __name__ == "__main__":
    sys.exit(run_main(main))
