"""Read one run directory into what the comparison needs; nothing else is read.

Conventions (every pipeline of the project follows them):
- ``config.json``: the resolved configuration; nested dicts are flattened to dotted keys.
- ``metrics_step.jsonl`` / ``metrics_epoch.jsonl``: curves, x = ``step`` / ``epoch``. Records of the
  same epoch (e.g. a train line and a val line) are merged. Steps a resumed run replayed (x going
  back) count once, with the replay's values (:func:`drop_replayed`).
- Final metrics: every ``metrics.json`` or ``summary.json`` at most two folders deep (a run's own
  evaluation outputs, e.g. ``fpdm/metrics.json``), numeric leaves flattened to
  ``<folder>/<dotted.key>``; a top-level ``"metrics"`` dict, when present, is read with the
  top-level ``reference_*`` entries (trivial references scored by the same evaluation: FLAIR
  thresholding, a random map, bicubic, the all-black reconstruction); the rest is metadata. The merged last epoch adds ``epoch/<key>`` for keys no result file has.
- Per-case tables: every ``cases.csv`` beside a result file (``plugins.common.run_log.write_case_table``):
  each numeric column becomes ``cases[<folder>/case.<column>] = {case: (subject, value)}`` and its mean
  over cases the final metric of the same name, so intervals can be taken over cases. A table without a
  ``subject`` column makes each case its own subject; ``case_units`` records which kind each key is.
- Validation subjects: the ``val`` list of the run's ``split.json`` (None without one).
- Samples: every ``*.png`` outside TensorBoard/checkpoint folders; digits in the name are a counter,
  so ``samples/step_0000020.png`` is matched across runs as ``samples/step_#.png`` (newest kept).
- Cost: median ``step_time_s`` and max ``peak_mem_mb`` over the step records, when logged.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field

from plugins.common.errors import InputError
from plugins.common.run_log import CASES_FILE, CONFIG_FILE, EPOCH_METRICS, STEP_METRICS, read_case_table
from plugins.report.stats import NO_SUBJECTS, SUBJECTS

RESULT_FILES = ("metrics.json", "summary.json")
SKIP_FOLDERS = {"tb", "tensorboard", "checkpoints", "logs", "__pycache__"}
MAX_DEPTH = 2
#: Step-record keys that are counters or cost, not curves of their own.
NOT_CURVES = {"step", "epoch", "samples", "lr", "step_time_s", "peak_mem_mb"}
#: Result-file keys that count progress rather than measure anything.
COUNTERS = {"step", "epoch", "global_step", "seed"}
QUARTILE = re.compile(r"_q\d$")


@dataclass
class Run:
    """One run directory. ``final``: metric -> float; ``images``: match key -> absolute PNG path."""

    path: str
    config: dict
    steps: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    final: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    cases: dict = field(default_factory=dict)
    case_units: dict = field(default_factory=dict)  # cases key -> SUBJECTS or NO_SUBJECTS (what a case's subject is)
    val_subjects: list | None = None

    @property
    def seed(self):
        for key in ("seed", "autoencoder.training.seed", "training.seed"):
            if key in self.config:
                return self.config[key]
        return None


def flatten(tree, prefix: str = "") -> dict:
    """Nested dicts to ``{"a.b": leaf}``; lists and other leaves are kept as they are."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def number(value):
    """A finite float for int/float values (not bools), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def _read_jsonl(path: str, x_key: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path}: line {lineno} is not a JSON object") from None
            if not isinstance(record, dict) or number(record.get(x_key)) is None:
                raise InputError(f"{path}: line {lineno} has no numeric {x_key!r}")
            records.append(record)
    return records


def drop_replayed(records: list[dict], key: str, strict: bool) -> list[dict]:
    """The records a resumed run superseded removed: a record whose ``key`` goes back (``<=`` the last
    one for steps, logged once each; ``<`` for epochs, which may log several lines) replaces every
    earlier record from that value on, so a step replayed after an interruption counts once (the
    replay's values kept)."""
    kept: list[dict] = []
    for record in records:
        x = record[key]
        if kept and (x < kept[-1][key] or (strict and x == kept[-1][key])):
            kept = [r for r in kept if r[key] < x]
        kept.append(record)
    return kept


def merge_epochs(records: list[dict]) -> list[dict]:
    """One record per epoch (later keys win), sorted by epoch."""
    merged: dict = {}
    for record in records:
        merged.setdefault(record["epoch"], {}).update(record)
    return [merged[e] for e in sorted(merged)]


def _walk(root: str):
    """(relative folder, file names) up to MAX_DEPTH folders deep, skipping logs and checkpoints."""
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        dirs[:] = sorted(d for d in dirs if d not in SKIP_FOLDERS and not d.startswith(".")
                         and not d.startswith("checkpoint") and depth < MAX_DEPTH)
        yield ("" if rel == "." else rel.replace(os.sep, "/")), sorted(files)


def final_metrics(root: str, epochs: list[dict]) -> dict:
    out = {}
    for rel, files in _walk(root):
        for name in RESULT_FILES:
            if name not in files:
                continue
            data = _read_json(os.path.join(root, rel, name))
            if not isinstance(data, dict):
                continue
            if isinstance(data.get("metrics"), dict):
                data = {**data["metrics"], **{k: v for k, v in data.items() if k.startswith("reference_")}}
            prefix = "/".join(p for p in (rel, "summary" if name == "summary.json" else "") if p)
            for key, value in flatten(data).items():
                if number(value) is not None and key.rsplit(".", 1)[-1] not in COUNTERS:
                    out[f"{prefix}/{key}" if prefix else key] = float(value)
    if epochs:  # the merged last epoch, unless a result file already repeats the key (summary.json does)
        repeated = {k.rsplit("/", 1)[-1] for k in out}
        for key, value in epochs[-1].items():
            if key not in COUNTERS and key not in repeated and number(value) is not None:
                out[f"epoch/{key}"] = float(value)
    return out


def case_metrics(root: str) -> tuple[dict, dict]:
    """``({"<folder>/case.<column>": {case: (subject, value)}}, {key: SUBJECTS | NO_SUBJECTS})`` from every
    ``cases.csv`` (numeric cells)."""
    out: dict = {}
    units: dict = {}
    for rel, files in _walk(root):
        if CASES_FILE not in files:
            continue
        path = os.path.join(root, rel, CASES_FILE)
        try:
            rows = read_case_table(path)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"{path}: unreadable per-case table ({type(err).__name__}: {err})") from None
        for row in rows:
            if "case" not in row:
                raise InputError(f"{path}: no 'case' column")
            for key, value in row.items():
                if key not in ("case", "subject") and number(value) is not None:
                    name = f"{rel}/case.{key}" if rel else f"case.{key}"
                    out.setdefault(name, {})[row["case"]] = (row.get("subject") or row["case"], float(value))
                    units[name] = SUBJECTS if "subject" in row else NO_SUBJECTS
    return out, units


def val_subjects(root: str) -> list | None:
    split = _read_json(os.path.join(root, "split.json")) if os.path.isfile(os.path.join(root, "split.json")) else None
    return sorted(split["val"]) if isinstance(split, dict) and isinstance(split.get("val"), list) else None


def sample_images(root: str) -> dict:
    images = {}
    for rel, files in _walk(root):
        for name in files:
            if name.lower().endswith(".png"):
                key = re.sub(r"\d+", "#", "/".join(p for p in (rel, name) if p))
                images[key] = max(images.get(key, ""), os.path.join(root, rel, name))
    return images


def run_cost(steps: list[dict]) -> dict:
    """``step_time_s`` (median over records) and ``peak_mem_mb`` (max), for those logged."""
    cost = {}
    times = [v for v in (number(r.get("step_time_s")) for r in steps) if v is not None]
    if times:
        cost["step_time_s"] = statistics.median(times)
    mems = [v for v in (number(r.get("peak_mem_mb")) for r in steps) if v is not None]
    if mems:
        cost["peak_mem_mb"] = max(mems)
    return cost


def curve_keys(records: list[dict]) -> set:
    """Numeric keys worth a curve (counters, cost and upstream's per-quartile copies left out)."""
    keys = set()
    for record in records:
        keys.update(k for k, v in record.items()
                    if k not in NOT_CURVES and not QUARTILE.search(k) and number(v) is not None)
    return keys


def read_run(path: str) -> Run:
    """Read ``path``; refuse a folder that is not a run directory, naming what is missing."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such run directory")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise InputError(f"{config_path}: missing; expected a run directory with config.json")
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: expected a JSON object of settings")
    steps = drop_replayed(_read_jsonl(os.path.join(path, STEP_METRICS), "step"), "step", strict=True)
    epochs = merge_epochs(drop_replayed(_read_jsonl(os.path.join(path, EPOCH_METRICS), "epoch"), "epoch",
                                        strict=False))
    cases, case_units = case_metrics(path)
    final = {**final_metrics(path, epochs),
             **{k: statistics.fmean(v for _, v in table.values()) for k, table in cases.items()}}
    return Run(path=path, config=flatten(config), steps=steps, epochs=epochs, final=final,
               images=sample_images(path), cost=run_cost(steps), cases=cases,
               case_units=case_units, val_subjects=val_subjects(path))
