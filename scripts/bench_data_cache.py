"""Slice cache vs the naive per-item NIfTI read, side by side in one run.

    python scripts/bench_data_cache.py [--data_dir BRATS_DIR] [--num_subjects 2] [--rounds 5]

Without ``--data_dir`` a temporary demo cohort of BraTS size (240x240x155, ``.nii.gz``) is built.
The naive reader does what upstream MedSegDiff's ``BRATSDataset3D.__getitem__`` does for every
slice: load all five NIfTI files with nibabel, ``get_fdata()``, take the axial slice. The cached
reader is :class:`plugins.data.BratsSliceDataset` (memmap). Reads are interleaved in rounds
(naive, then cached) on random slices; one JSON line per figure, the last being the speed-up
``(cached slices/s) / (naive slices/s)`` against the target 1000.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import nibabel
import numpy as np
import torch

from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser
from plugins.data.brats_layout import MODALITIES, SEG, discover_subjects
from plugins.data.brats_slices import BratsSliceDataset
from plugins.data.demo_cohort import write_cohort
from plugins.data.slice_preprocess import SliceSettings

DEFAULTS = dict(data_dir="", num_subjects=2, image_size=128, rounds=5, naive_reads=2, cached_reads=5000, seed=0,
                cache_dir="")
HELP = dict(
    data_dir="BraTS folder (empty: a temporary BraTS-size demo cohort)",
    num_subjects="subjects of the temporary demo cohort",
    image_size="side of the cached slices, pixels",
    rounds="interleaved rounds (naive reads, then cached reads)",
    naive_reads="naive NIfTI slice reads per round",
    cached_reads="cached slice reads per round",
    seed="seed of the demo cohort and of the random slices",
    cache_dir="slice cache folder (empty: a temporary one)",
)
TARGET = 1000.0


def naive_read(subject, z: int) -> dict:
    """Upstream-style item: every file of the subject read in full, then one axial slice kept."""
    image = torch.stack([torch.tensor(nibabel.load(subject.files[m]).get_fdata())[:, :, z] for m in MODALITIES])
    label = torch.tensor(nibabel.load(subject.files[SEG]).get_fdata())[:, :, z]
    return {"image": image, "label": label}


def emit(figure: str, value, **extra) -> None:
    print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def main(argv=None) -> None:
    args = make_parser(__doc__.splitlines()[0], DEFAULTS, phrases=(HELP,)).parse_args(argv)
    if args.rounds < 1 or args.naive_reads < 1 or args.cached_reads < 1:
        raise InputError("--rounds, --naive_reads, --cached_reads: expected integers >= 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        data_dir = args.data_dir
        if not data_dir:
            data_dir = os.path.join(tmp, "brats")
            write_cohort(data_dir, args.num_subjects, args.seed, (240, 240, 155))
        subjects = {s.name: s for s in discover_subjects(data_dir)}
        start = time.perf_counter()
        ds = BratsSliceDataset(data_dir, settings=SliceSettings(image_size=args.image_size),
                               cache_dir=args.cache_dir or os.path.join(tmp, "cache"))
        emit("cache_build_s_per_subject", (time.perf_counter() - start) / len(subjects))
        rng = np.random.default_rng(args.seed)
        naive_s = cached_s = 0.0
        for _ in range(args.rounds):
            for i in rng.integers(len(ds), size=args.naive_reads):
                start = time.perf_counter()
                naive_read(subjects[ds.subjects[ds._rows[i][0]]], int(ds.slice_index[i]))
                naive_s += time.perf_counter() - start
            picks = rng.integers(len(ds), size=args.cached_reads)
            start = time.perf_counter()
            for i in picks:
                ds[int(i)]
            cached_s += time.perf_counter() - start
        naive_rate = args.rounds * args.naive_reads / naive_s
        cached_rate = args.rounds * args.cached_reads / cached_s
        shape = list(nibabel.load(next(iter(subjects.values())).files[SEG]).shape)
        emit("naive_s_per_slice", 1.0 / naive_rate, volume_shape=shape)
        emit("cached_ms_per_slice", 1000.0 / cached_rate, image_size=args.image_size)
        emit("cache_speedup", cached_rate / naive_rate, target=TARGET, meets_target=cached_rate / naive_rate >= TARGET)


if __name__ == "__main__":
    sys.exit(run_main(main))
