"""Check a BraTS folder and fill its slice cache: ``python -m plugins.data.prepare --data_dir DIR``.

Every subject's NIfTI files are read once and checked (missing modality, shape mismatch,
NaN/Inf, complex dtype, float32 overflow, a constant modality, unexpected seg labels, unreadable
file: one ``error:`` line naming the file, exit 2); a subject without a usable slice gets a
``warning:`` line and is counted in the summary;
the preprocessed slices go to the cache so training starts without reading NIfTI. With
``--csv_path`` the grades are checked too; with ``--out_dir`` the cohort's split is drawn (or
checked) and copied into that run directory, and the training split's n_LGG/n_HGG/alpha printed.
"""

from __future__ import annotations

import sys

from plugins.common.errors import run_main
from plugins.common.flags import make_parser
from plugins.data.brats_slices import DATA_DEFAULTS, BratsSliceDataset, build_brats_datasets, settings_from_args
from plugins.data.brats_layout import discover_subjects
from plugins.data.grades import read_grade_csv

DEFAULTS = dict(DATA_DEFAULTS, out_dir="")


def main(argv=None) -> None:
    args = make_parser(__doc__.splitlines()[0], DEFAULTS).parse_args(argv)
    settings = settings_from_args(args)
    if args.out_dir:
        data = build_brats_datasets(args.data_dir, args.out_dir, args.csv_path, settings, args.val_fraction,
                                    args.split_seed, args.cache_dir, split_file=args.split_file)
        sets = {"train": data.train, "val": data.val}
    else:
        names = [s.name for s in discover_subjects(args.data_dir, settings.modalities)]
        grades = read_grade_csv(args.csv_path, names) if args.csv_path else None
        sets = {"all": BratsSliceDataset(args.data_dir, names, grades, settings, args.cache_dir)}
    for name, ds in sets.items():
        print(f"{name}: {len(ds.subjects)} subjects, {len(ds)} slices "
              f"({int(ds.slice_labels.sum())} with tumour), {len(ds.empty_subjects)} subject(s) without a usable "
              f"slice, cache {ds.cache.folder}")


if __name__ == "__main__":
    sys.exit(run_main(main))
