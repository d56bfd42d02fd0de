"""One clear line and a non-zero exit for bad input.

Library code raises :class:`InputError` with a message that names the file,
field or flag and what was expected. Entry points wrap ``main`` in
:func:`run_main`, which prints ``error: <message>`` to stderr, exits with
status 2, and always tears down a torch.distributed process group. A file-system failure (no space,
no permission, read-only, a file in place of a folder: :data:`WRITE_ERRNOS`) is reported the same
way, naming the path and the cause.
"""

from __future__ import annotations

import errno
import sys

import torch.distributed as dist

from patches.errors import SeamError

EXIT_BAD_INPUT = 2
#: File-system failures reported as one line: disk full, quota, file size limit, read-only, no
#: permission, a file where a folder was expected (or the reverse).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EEXIST, errno.ENOTDIR, errno.EISDIR}


class InputError(ValueError):
    """Bad user input: a file, field or flag that is not what was expected."""


def run_main(main, argv=None) -> int:
    """Run ``main(argv)``; turn :class:`InputError` and seam errors into one line + exit 2."""
    try:
        main(argv)
        return 0
    except (InputError, SeamError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else "a write failed: "
        print(f"error: {where}{err.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
