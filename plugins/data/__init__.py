"""Data: BraTS NIfTI slices with grades, splits and a slice cache; the embedded demo cohort.

``filaments`` (sparse 3D volumes) and ``sr_pairs`` (super-resolution pairs) live
in this package too but are imported on their own, not from here.
"""

from plugins.data.brats_layout import MODALITIES, Subject, discover_subjects
from plugins.data.brats_slices import (DATA_DEFAULTS, DATA_HELP, BratsData, BratsSliceDataset, build_brats_datasets,
                                       settings_from_args)
from plugins.data.grades import class_stats, format_class_stats, read_grade_csv
from plugins.data.slice_preprocess import SliceSettings
from plugins.data.splits import cohort_split, stratified_split

__all__ = [
    "MODALITIES", "Subject", "discover_subjects", "DATA_DEFAULTS", "DATA_HELP", "BratsData", "BratsSliceDataset",
    "build_brats_datasets", "settings_from_args", "class_stats", "format_class_stats", "read_grade_csv",
    "SliceSettings", "cohort_split", "stratified_split",
]
