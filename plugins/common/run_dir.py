"""A run directory belongs to one run: locked while a process trains in it, refused to another configuration.

:func:`claim_run_dir` is called by every trainer before it writes anything:

- lock: ``RUN_DIR/.lock`` is held with ``fcntl.flock`` for the life of the process (the kernel releases
  it when the process ends, however it ends, so a dead process never leaves a stale lock); the file
  holds the owner's pid and host for the refusal message. A second trainer in the same directory is
  refused with one line naming the holder;
- one configuration: when ``RUN_DIR/config.json`` exists, the new configuration must equal it on
  every key except :data:`VOLATILE_KEYS`, and the run must be a resume
  (``--resume_checkpoint``); otherwise the start is refused naming the differing keys (or asking for
  ``--resume_checkpoint latest``). A directory without ``config.json`` is free.

Under ``torch.distributed`` rank 0 decides and every rank raises the same :class:`InputError`, so no
rank is left waiting at a collective.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket

import torch.distributed as dist

from plugins.common.errors import InputError
from plugins.common.run_log import CONFIG_FILE, as_saved

LOCK_FILE = ".lock"
#: Keys that may change between a run and its resume: how far to train, where to resume from, how to load data.
VOLATILE_KEYS = frozenset({"resume_checkpoint", "resume_from_checkpoint", "max_steps", "num_workers",
                           "num_processes"})

_held: dict[str, int] = {}  # absolute run dir -> open lock fd (kept for the life of the process)


def config_differences(saved: dict, given: dict) -> list[str]:
    """``key: saved -> given`` for every key (or dotted key ending) not in :data:`VOLATILE_KEYS` whose
    values differ, a key missing on one side included."""
    out = []
    for key in sorted(set(saved) | set(given)):
        if key.rsplit(".", 1)[-1] in VOLATILE_KEYS:
            continue
        old = saved.get(key, "<absent>")
        new = as_saved(given[key]) if key in given else "<absent>"
        if old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def _lock(run_dir: str) -> None:
    key = os.path.abspath(run_dir)
    if key in _held:
        return
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise InputError(f"{run_dir}: another training holds this run directory ({holder}); wait for it to "
                         "finish or choose another --out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[key] = fd


def release_run_dir(run_dir: str) -> None:
    """Release the lock early (tests; a process exiting releases it anyway)."""
    fd = _held.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        os.close(fd)


def _check(run_dir: str, config: dict, resuming: bool) -> None:
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise InputError(f"--out_dir {run_dir}: exists and is not a folder")
    try:
        os.makedirs(run_dir, exist_ok=True)
        _lock(run_dir)
    except PermissionError:
        raise InputError(f"--out_dir {run_dir}: not writable (permission denied)") from None
    except OSError as err:
        raise InputError(f"--out_dir {run_dir}: cannot be written ({err.strerror})") from None
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err}); this folder holds something else, choose another "
                         "--out_dir") from None
    differ = config_differences(saved, config)
    if differ:
        raise InputError(f"{run_dir} holds another run (config.json differs: {'; '.join(differ)}); choose "
                         "another --out_dir")
    if not resuming:
        raise InputError(f"{run_dir} already holds this run; continue it with --resume_checkpoint latest or "
                         "choose another --out_dir")


def claim_run_dir(run_dir: str, config: dict, resuming: bool) -> None:
    """Lock ``run_dir`` and refuse it when it holds another run (see the module docstring)."""
    distributed = dist.is_available() and dist.is_initialized()
    message = None
    if not distributed or dist.get_rank() == 0:
        try:
            _check(run_dir, config, resuming)
        except InputError as err:
            message = str(err)
    if distributed and dist.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise InputError(message)
