"""Run-directory files that the comparison tool reads.

A run directory holds ``config.json`` (the resolved configuration),
``metrics_step.jsonl`` and ``metrics_epoch.jsonl`` (one JSON object per line,
always with a ``step`` or ``epoch`` key), TensorBoard events, checkpoints and
sample images. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import math
import os

import torch.distributed as dist

from plugins.common.errors import InputError

CONFIG_FILE = "config.json"
STEP_METRICS = "metrics_step.jsonl"
EPOCH_METRICS = "metrics_epoch.jsonl"
CASES_FILE = "cases.csv"


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _plain(value):
    """JSON-safe scalar: tensors and numpy scalars to float, NaN/Inf to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_saved(value):
    """``value`` as it reads back from ``config.json`` (tuples as lists, tensors as floats, objects as str)."""
    return json.loads(json.dumps(_plain(value), default=str))


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
    """``json.dump(obj)`` to a per-process temp file beside ``path``, then rename it into place."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, **dump_kwargs)
    os.replace(tmp, path)


def write_case_table(path: str, rows: list[dict]) -> None:
    """Per-case metrics beside an evaluation's ``metrics.json`` (atomically, like it).

    One row per case. Column ``case`` comes first and is the pairing key across runs
    (``subject``, ``subject:slice`` or a volume id, unique within the table); ``subject``
    names the subject a case belongs to (the unit a bootstrap resamples); the other
    columns are metrics named as in ``metrics.json`` (empty cell = undefined for that case).
    """
    if not rows:
        raise ValueError(f"{path}: no cases to write")
    cases = [str(r["case"]) for r in rows]
    if len(set(cases)) != len(cases):
        raise ValueError(f"{path}: case ids are not unique")
    columns = ["case"] + [k for k in dict.fromkeys(k for r in rows for k in r) if k != "case"]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if _plain(v) is None else _plain(v)) for k, v in row.items()})
    os.replace(tmp, path)


def _cell(key: str, value: str):
    if key in ("case", "subject"):
        return value
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def read_case_table(path: str) -> list[dict]:
    """Rows of a ``cases.csv``: ``case``/``subject`` as strings, numeric cells as floats, empty cells None."""
    with open(path, newline="") as f:
        return [{k: _cell(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_config(run_dir: str, config: dict) -> str:
    """Write the resolved configuration to ``run_dir/config.json``."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if is_main_process():
        os.makedirs(run_dir, exist_ok=True)
        write_json_atomic(path, {k: _plain(v) for k, v in config.items()}, indent=2, sort_keys=True, default=str)
    return path


def read_config(run_dir: str) -> dict:
    with open(os.path.join(run_dir, CONFIG_FILE)) as f:
        return json.load(f)


def check_config(run_dir: str, given: dict, keys) -> dict:
    """The saved ``config.json`` of ``run_dir`` ({} if none); refuse ``given`` values of ``keys`` that differ."""
    if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)):
        return {}
    saved = read_config(run_dir)
    differ = [f"--{k} {given[k]!r} (the run has {saved[k]!r})" for k in keys
              if k in saved and k in given and as_saved(given[k]) != saved[k]]
    if differ:
        raise InputError(f"{os.path.join(run_dir, CONFIG_FILE)}: flags disagree with the saved run: {'; '.join(differ)}")
    return saved


class MetricsLog:
    """Append-only JSONL metrics: ``log_step(step, values)``, ``log_epoch(epoch, values)``."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        if is_main_process():
            os.makedirs(run_dir, exist_ok=True)

    def _append(self, name: str, record: dict) -> None:
        if not is_main_process():
            return
        with open(os.path.join(self.run_dir, name), "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def log_step(self, step: int, values: dict) -> None:
        self._append(STEP_METRICS, {"step": int(step), **values})

    def log_epoch(self, epoch: int, values: dict) -> None:
        self._append(EPOCH_METRICS, {"epoch": int(epoch), **values})


def truncate_metrics(run_dir: str, name: str, key: str, keep_below: int) -> None:
    """Drop the records of ``run_dir/name`` whose ``key`` is >= ``keep_below`` (a resume replays them).

    Rank 0 only; atomic (temp file + rename), so call it before anything opens the file for appending.
    """
    path = os.path.join(run_dir, name)
    if not is_main_process() or not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            value = json.loads(line).get(key)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut by a crash
        if value is None or value < keep_below:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) == len(lines):
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    """All records of a JSONL metrics file ([] when it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
