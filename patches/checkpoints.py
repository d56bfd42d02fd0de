"""Safe checkpoint I/O: atomic writes and ``weights_only`` loads.

A checkpoint is written to a temporary file in the target folder and renamed
into place, so a crash never leaves a truncated file under the final name; a failed write (disk
full, read-only folder) is one :class:`CheckpointWriteError` naming the file and the cause.
Loading uses ``torch.load(..., weights_only=True)``: a file that needs
arbitrary pickled code is refused with :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile

import torch
from safetensors import SafetensorError

from patches.errors import SeamError


class CheckpointError(SeamError, ValueError):
    """A checkpoint cannot be found or does not fit."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled code (or is not a torch file at all)."""


class CheckpointWriteError(SeamError, OSError):
    """A checkpoint could not be written (disk full, read-only folder, file size limit)."""


def save_state_folder(save, folder: str) -> None:
    """``save(folder)`` (e.g. ``accelerator.save_state``); on a failed write the folder is removed and
    a :class:`CheckpointWriteError` names it and the cause (torch reports a full disk as a bare
    ``RuntimeError``, so the cause is read from the free space left)."""
    try:
        save(folder)
    except (OSError, RuntimeError, SafetensorError) as err:
        full = shutil.disk_usage(os.path.dirname(os.path.abspath(folder))).free < 2**20
        cause = err.strerror if isinstance(err, OSError) and err.strerror else (
            "no space left on device" if full else str(err).splitlines()[0])
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointWriteError(f"{folder}: cannot write the checkpoint ({cause})") from None


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temp file in the same folder, then ``os.replace``.

    The object is serialised in memory and written with plain file I/O, so a failing write names its
    cause (no space left, read-only file system, ...) in a :class:`CheckpointWriteError`; the temp
    file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        raise CheckpointWriteError(f"{path}: cannot write the checkpoint ({err.strerror or err})") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path_or_file, map_location="cpu"):
    """Load a tensor-only checkpoint; refuse pickled code with one clear line."""
    name = path_or_file if isinstance(path_or_file, str) else "checkpoint"
    try:
        return torch.load(path_or_file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "not loadable"
        raise UnsafeCheckpointError(
            f"{name}: refused, not a tensor-only checkpoint (weights_only load failed: {first})"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise UnsafeCheckpointError(f"{name}: not a readable torch checkpoint ({err})") from None
