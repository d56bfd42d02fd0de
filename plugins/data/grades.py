"""Tumour grades from BraTS ``name_mapping.csv`` and the class weights derived from them.

The CSV needs the columns ``BraTS_2020_subject_ID`` and ``Grade`` (HGG or LGG;
surrounding whitespace and any letter case accepted). Grades map to
``LGG -> 0``, ``HGG -> 1``. Rows for subjects not on disk are ignored; a subject
on disk without a row is refused.
"""

from __future__ import annotations

import os

import pandas as pd

from plugins.common.errors import InputError

COHORT_CSV = "name_mapping.csv"  # the grade CSV a BraTS cohort folder ships
ID_COLUMN = "BraTS_2020_subject_ID"
GRADE_COLUMN = "Grade"
GRADES = {"LGG": 0, "HGG": 1}
GRADE_NAMES = {v: k for k, v in GRADES.items()}
NO_GRADE = -1


def read_grade_csv(csv_path: str, subjects=None, id_column: str = ID_COLUMN) -> dict[str, int]:
    """``{subject: 0 (LGG) | 1 (HGG)}`` for the subjects on disk (all rows when ``subjects`` is None).

    Refuses, in one line: a missing file or column, an unknown grade, a duplicate
    subject, and subjects in ``subjects`` that have no grade (named, with their count).
    """
    if not os.path.isfile(csv_path):
        raise InputError(f"--csv_path: {csv_path!r} is not a file")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:
        raise InputError(f"{csv_path}: unreadable CSV ({type(err).__name__}: {err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in (id_column, GRADE_COLUMN):
        if column not in table.columns:
            raise InputError(f"{csv_path}: missing column {column!r} (columns found: {list(table.columns)})")
    grades: dict[str, int] = {}
    first_row: dict[str, int] = {}
    for row, (subject, grade) in enumerate(zip(table[id_column], table[GRADE_COLUMN]), start=2):
        subject, grade = subject.strip(), grade.strip().upper()
        if not subject:
            continue
        if grade not in GRADES:
            raise InputError(f"{csv_path}: line {row} ({subject}): unknown grade {grade!r}; expected HGG or LGG")
        if subject in grades:
            raise InputError(f"{csv_path}: duplicate subject {subject} (lines {first_row[subject]} and {row})")
        grades[subject], first_row[subject] = GRADES[grade], row
    if subjects is None:
        return grades
    missing = [s for s in subjects if s not in grades]
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise InputError(f"{csv_path}: {len(missing)} subject(s) on disk have no grade: {shown}")
    return {s: grades[s] for s in subjects}


def class_stats(grades) -> dict:
    """Counts and inverse-frequency weights of a list of grades (0 LGG, 1 HGG).

    ``alpha_c = total / (2 * n_c)``, so a balanced set has both weights 1.
    Refuses a set that lacks one class (its weight would be infinite).
    """
    grades = list(grades)
    n_lgg, n_hgg = grades.count(0), grades.count(1)
    if n_lgg == 0 or n_hgg == 0:
        raise InputError(f"training split has n_LGG={n_lgg}, n_HGG={n_hgg}; class weights need both grades")
    total = n_lgg + n_hgg
    return {"n_LGG": n_lgg, "n_HGG": n_hgg, "alpha_LGG": total / (2 * n_lgg), "alpha_HGG": total / (2 * n_hgg)}


def format_class_stats(stats: dict) -> str:
    """One start-up line, e.g. ``training split: n_LGG=76 n_HGG=293 alpha_LGG=2.4276 alpha_HGG=0.6297``."""
    return (f"training split: n_LGG={stats['n_LGG']} n_HGG={stats['n_HGG']} "
            f"alpha_LGG={stats['alpha_LGG']:.4f} alpha_HGG={stats['alpha_HGG']:.4f}")
