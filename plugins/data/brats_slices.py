"""BraTS axial-slice dataset for the 2D models, and the train/val builder every pipeline uses.

Every item is the same dict, with or without grades:

====================  =======================  ==========================================
key                   type / shape             meaning
====================  =======================  ==========================================
``image``             float32 [C, S, S]        normalised modalities, in ``settings.modalities`` order
``seg``               float32 [1, S, S]        ``label_map > 0`` (whole tumour)
``label_map``         int64 [1, S, S]          original BraTS labels 0/1/2/4
``slice_label``       int                      1 if the original slice has any tumour voxel, else 0
``grade``             int                      0 LGG, 1 HGG, -1 without a grade CSV
``subject``           str                      e.g. ``BraTS20_Training_001``
``slice_index``       int                      axial index z in the original volume
====================  =======================  ==========================================

Slices come from :class:`~plugins.data.slice_cache.SliceCache` memmaps: the first
construction writes the cache, later ones read no NIfTI.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from plugins.common.errors import InputError
from plugins.data.brats_layout import discover_subjects
from plugins.data.grades import COHORT_CSV, NO_GRADE, class_stats, format_class_stats, read_grade_csv
from plugins.data.slice_cache import SliceCache
from plugins.data.slice_preprocess import SliceSettings
from plugins.data.splits import cohort_split, keep_run_split

CACHE_SUBDIR = ".slice_cache"

#: Data flags a 2D training script merges into its defaults dict.
DATA_DEFAULTS = dict(
    data_dir="",
    csv_path="",
    image_size=128,
    modalities="t1,t1ce,t2,flair",
    crop=0,
    value_range="0,1",
    val_fraction=0.2,
    split_seed=0,
    split_file="",
    cache_dir="",
)
#: One phrase per flag of ``DATA_DEFAULTS`` (meaning, units), for ``--help``.
DATA_HELP = dict(
    data_dir="BraTS folder (one subfolder per subject)",
    csv_path="grade CSV (BraTS_2020_subject_ID, Grade); empty: no grades",
    image_size="side of the resized axial slice, pixels",
    modalities="comma-separated MRI modalities, one input channel each",
    crop="centre-crop the squared slice to this side before resizing, pixels (0 = no crop)",
    value_range="'low,high': intensity range the normalised slices are mapped to",
    val_fraction="fraction of subjects held out for validation",
    split_seed="seed of the subject-level train/validation split",
    split_file="split.json to reuse (empty: draw the split from split_seed)",
    cache_dir="slice cache folder (empty: DATA_DIR/.slice_cache)",
)


def settings_from_args(args) -> SliceSettings:
    """:class:`SliceSettings` from parsed :data:`DATA_DEFAULTS` flags."""
    try:
        value_range = tuple(float(v) for v in str(args.value_range).split(","))
    except ValueError:
        value_range = ()
    if len(value_range) != 2:
        raise InputError(f"--value_range: got {args.value_range!r}; expected two numbers 'low,high', e.g. 0,1 or -1,1")
    return SliceSettings(image_size=int(args.image_size), modalities=args.modalities, crop=int(args.crop),
                         value_range=value_range)


class BratsSliceDataset(Dataset):
    """Axial slices of the BraTS subjects ``subjects`` (all on disk when None) under ``data_dir``.

    ``grades`` maps subject -> 0/1 (LGG/HGG); ``cache_dir`` defaults to ``data_dir/.slice_cache``.
    Attributes ``slice_labels`` and ``grades`` ([N] int arrays) serve samplers; ``empty_subjects``
    names the subjects without a usable slice (each also warned about on stderr).
    """

    def __init__(self, data_dir: str, subjects=None, grades: dict | None = None,
                 settings: SliceSettings | None = None, cache_dir: str = "", progress: bool = True):
        self.settings = settings or SliceSettings()
        found = {s.name: s for s in discover_subjects(data_dir, self.settings.modalities)}
        names = sorted(found) if subjects is None else list(subjects)
        unknown = [n for n in names if n not in found]
        if unknown:
            raise InputError(f"{data_dir}: subject(s) not on disk: {', '.join(unknown[:10])}")
        self.cache = SliceCache(cache_dir or os.path.join(data_dir, CACHE_SUBDIR), self.settings)
        self.subjects = names
        rows, z, tumour, grade = [], [], [], []
        self.empty_subjects = []
        for pos, name in enumerate(tqdm(names, desc="slices", unit="subject", disable=not progress)):
            meta = self.cache.ensure(found[name])
            if not meta["slice_index"]:
                self.empty_subjects.append(name)
                print(f"warning: {name}: no usable slice (no axial slice has brain fraction >= "
                      f"{self.settings.min_brain_fraction}); the subject contributes nothing", file=sys.stderr)
            rows += [(pos, r) for r in range(len(meta["slice_index"]))]
            z += meta["slice_index"]
            tumour += meta["tumour"]
            grade += [grades[name] if grades else NO_GRADE] * len(meta["slice_index"])
        self._rows = rows
        self.slice_index = np.asarray(z, dtype=np.int64)
        self.slice_labels = np.asarray(tumour, dtype=np.int64)
        self.grades = np.asarray(grade, dtype=np.int64)
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memmaps are reopened in each worker, never pickled
        return state

    def _array(self, pos: int) -> np.ndarray:
        if pos not in self._arrays:
            self._arrays[pos] = self.cache.open(self.subjects[pos])
        return self._arrays[pos]

    def __getitem__(self, index: int) -> dict:
        pos, row = self._rows[index]
        block = torch.from_numpy(np.array(self._array(pos)[row])).float()  # torch's f16->f32 is vectorised
        labels = block[-1:].long()
        return {
            "image": block[:-1],
            "seg": (labels > 0).float(),
            "label_map": labels,
            "slice_label": int(self.slice_labels[index]),
            "grade": int(self.grades[index]),
            "subject": self.subjects[pos],
            "slice_index": int(self.slice_index[index]),
        }


@dataclass
class BratsData:
    """Train and val datasets of one run, its split (and the cohort file it came from) and, with
    grades, the training class stats."""

    train: BratsSliceDataset
    val: BratsSliceDataset
    split: dict
    split_source: str
    class_stats: dict | None


def build_brats_datasets(data_dir: str, run_dir: str, csv_path: str = "", settings: SliceSettings | None = None,
                         val_fraction: float = 0.2, split_seed: int = 0, cache_dir: str = "", log=print,
                         progress: bool = True, split_file: str = "") -> BratsData:
    """Discover subjects, read grades (if ``csv_path``), take the cohort's split (:mod:`.splits`: stratified
    by ``csv_path``'s grades or the cohort's ``name_mapping.csv``; a copy kept in ``run_dir``), print
    n_LGG/n_HGG/alpha of the training split, and build both datasets (with grades only from ``csv_path``)."""
    settings = settings or SliceSettings()
    names = [s.name for s in discover_subjects(data_dir, settings.modalities)]
    grades = read_grade_csv(csv_path, names) if csv_path else None
    cohort_csv = os.path.join(data_dir, COHORT_CSV)
    strata = grades or (read_grade_csv(cohort_csv, names) if os.path.isfile(cohort_csv) else None)
    split, source = cohort_split(data_dir, names, strata, val_fraction, split_seed, split_file, log)
    if run_dir:
        keep_run_split(run_dir, split, source)
    stats = None
    if grades:
        stats = class_stats([grades[s] for s in split["train"]])
        log(format_class_stats(stats))
    train = BratsSliceDataset(data_dir, split["train"], grades, settings, cache_dir, progress)
    val = BratsSliceDataset(data_dir, split["val"], grades, settings, cache_dir, progress)
    return BratsData(train, val, split, source, stats)
