"""One subject-level train/val split per cohort, stratified by grade, shared by every run.

The split is a pure function of the cohort: ``stratified_split(subjects, grades, val_fraction,
split_seed)``. It is drawn once and kept in one file, ``DATA_DIR/splits/split_val<f>_seed<s>.json``
(or ``--split_file PATH``); every run of a comparison, every stage and every evaluation reads that
file, so they all train and validate on the same subjects. Grades stratify the split whenever they
are known: from ``--csv_path``, else from the cohort's own ``name_mapping.csv``, so a run without a
classification head splits exactly like one with it.

- The file records the subjects and grades it was drawn from; the default file is redrawn from the
  cohort on every read and refused (naming it) when the cohort no longer gives the same split. A file
  passed with ``--split_file`` is used as it is (it may be hand-made), once its subjects are on disk.
- Each run keeps a copy, ``RUN_DIR/split.json`` (with ``"source"``, the cohort file). Resuming a run,
  or initialising one from a checkpoint, whose ``split.json`` holds other subjects is refused, naming
  both files.

Per grade (or the whole cohort without grades), ``round(n * val_fraction)`` subjects go to val,
adjusted by largest remainder so the total is ``max(1, round(N * val_fraction))`` and every grade
keeps at least one training subject.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from plugins.common.errors import InputError
from plugins.common.run_log import write_json_atomic

SPLIT_FILE = "split.json"
COHORT_SPLIT_DIR = "splits"


def stratified_split(subjects, grades: dict | None = None, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """``{"train": [...], "val": [...], "seed", "val_fraction"}`` with sorted subject lists."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val_fraction: got {val_fraction}; expected 0 <= value < 1")
    subjects = sorted(subjects)
    strata: dict[int, list[str]] = {}
    for s in subjects:
        strata.setdefault(grades[s] if grades else 0, []).append(s)
    keys = sorted(strata)
    target = 0 if val_fraction == 0 or len(subjects) < 2 else max(1, round(len(subjects) * val_fraction))
    exact = {k: len(strata[k]) * val_fraction for k in keys}
    quota = {k: min(math.floor(exact[k]), len(strata[k]) - 1) for k in keys}
    for k in sorted(keys, key=lambda k: (exact[k] - quota[k], len(strata[k])), reverse=True):
        if sum(quota.values()) >= target:
            break
        if quota[k] < len(strata[k]) - 1:
            quota[k] += 1
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in keys:
        order = rng.permutation(len(strata[k]))
        chosen = {strata[k][i] for i in order[:quota[k]]}
        val += [s for s in strata[k] if s in chosen]
        train += [s for s in strata[k] if s not in chosen]
    return {"seed": int(seed), "val_fraction": float(val_fraction), "train": sorted(train), "val": sorted(val)}


def cohort_split_path(data_dir: str, val_fraction: float, split_seed: int) -> str:
    return os.path.join(data_dir, COHORT_SPLIT_DIR, f"split_val{val_fraction:g}_seed{split_seed}.json")


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            split = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable split file ({type(err).__name__}: {err})") from None
    if not (isinstance(split, dict) and isinstance(split.get("train"), list) and isinstance(split.get("val"), list)):
        raise InputError(f"{path}: expected a JSON object with 'train' and 'val' subject lists")
    if set(split["train"]) & set(split["val"]):
        raise InputError(f"{path}: subjects in both train and val: {', '.join(sorted(set(split['train']) & set(split['val']))[:5])}")
    return split


def same_subjects(a: dict, b: dict) -> bool:
    return sorted(a["train"]) == sorted(b["train"]) and sorted(a["val"]) == sorted(b["val"])


def cohort_split(data_dir: str, subjects, grades: dict | None, val_fraction: float = 0.2, split_seed: int = 0,
                 split_file: str = "", log=print) -> tuple[dict, str]:
    """``(split, path)``: the cohort's split file, read (checked) or drawn and written once."""
    if split_file:
        if os.path.isfile(split_file):
            split = _read(split_file)
            gone = sorted(set(split["train"] + split["val"]) - set(subjects))
            if gone:
                raise InputError(f"--split_file {split_file}: {len(gone)} subject(s) are not in --data_dir: "
                                 f"{', '.join(gone[:10])}")
            unused = len(set(subjects) - set(split["train"] + split["val"]))
            log(f"split {split_file}: {len(split['train'])} train, {len(split['val'])} val subjects"
                + (f" ({unused} subject(s) on disk left out)" if unused else ""))
            return split, os.path.abspath(split_file)
        path = split_file
    else:
        path = cohort_split_path(data_dir, val_fraction, split_seed)
    drawn = stratified_split(subjects, grades, val_fraction, split_seed)
    if os.path.isfile(path):
        saved = _read(path)
        if not same_subjects(saved, drawn):
            raise InputError(f"{path}: this cohort's subjects or grades now give another split than the one "
                             "saved (subjects added or removed, or grades now known); move the file away to "
                             "draw it again, or pass --split_file to keep it")
        log(f"split {path}: {len(saved['train'])} train, {len(saved['val'])} val subjects")
        return saved, os.path.abspath(path)
    record = {**drawn, "stratified_by_grade": bool(grades), "grades": grades or None}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json_atomic(path, record, indent=2)  # every rank draws the same split; any may write it
    except OSError as err:
        raise InputError(f"{path}: cannot write the cohort's split file ({err.strerror}); pass --split_file "
                         "with a writable path") from None
    log(f"wrote split {path}: {len(drawn['train'])} train, {len(drawn['val'])} val subjects"
        f"{', stratified by grade' if grades else ''}")
    return record, os.path.abspath(path)


def run_split(run_dir: str) -> dict | None:
    """The run's copy of its split, ``run_dir/split.json`` (checked like any split file); None without one."""
    path = os.path.join(run_dir, SPLIT_FILE)
    return _read(path) if os.path.isfile(path) else None


def keep_run_split(run_dir: str, split: dict, source: str) -> None:
    """Copy ``split`` into ``run_dir/split.json``; refuse a run directory that holds another split."""
    path = os.path.join(run_dir, SPLIT_FILE)
    if os.path.isfile(path) and not same_subjects(_read(path), split):
        raise InputError(f"{path}: this run was trained on another split than {source}; start a new --out_dir "
                         "(or pass the run's split with --split_file)")
    os.makedirs(run_dir, exist_ok=True)
    write_json_atomic(path, {"source": source, "seed": split.get("seed"), "val_fraction": split.get("val_fraction"),
                             "train": split["train"], "val": split["val"]}, indent=2)


def check_checkpoint_split(checkpoint: str, split: dict, source: str, log=print) -> None:
    """Refuse a checkpoint whose run's ``split.json`` (beside it) holds other subjects than ``split``."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), SPLIT_FILE)
    if not os.path.isfile(path):
        log(f"warning: {checkpoint} has no {SPLIT_FILE} beside it; its training subjects cannot be checked")
        return
    if not same_subjects(_read(path), split):
        raise InputError(f"{checkpoint}: trained on the split {path}, which differs from this run's split "
                         f"{source}; a run must train and validate on the subjects its checkpoint did")
