"""Replace a folder only when everything in it was written by the project.

A writer builds its output in a temporary folder, then :func:`replace_owned_dir` moves it into place
with a manifest (``.written_by_medplug``: one relative path per line of every file it wrote). An
existing destination is replaced only when each file in it is listed in its own manifest or lies in
a derived folder (:data:`DERIVED`: the slice cache, the cohort's split files); otherwise it is refused
with one line naming a foreign file, before anything changes. :func:`check_replaceable` runs the same check
up front, so a writer refuses before its (slow) work.
"""

from __future__ import annotations

import os
import shutil

from plugins.common.errors import InputError

MANIFEST = ".written_by_medplug"
#: Folders the project derives from a data set and may drop with it.
DERIVED = (".slice_cache", "splits")


def _files(root: str) -> list[str]:
    out = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel != "." and rel.split(os.sep)[0] in DERIVED:
            continue
        out += [os.path.normpath(os.path.join(rel, f)) for f in files]
    return sorted(out)


def check_replaceable(final: str, flag: str = "--out_dir") -> None:
    """Refuse ``final`` when it exists and holds a file the project did not write."""
    if not os.path.lexists(final):
        return
    if not os.path.isdir(final) or os.path.islink(final):
        raise InputError(f"{flag}: {final} exists and is not a folder; move it or choose another {flag}")
    manifest = os.path.join(final, MANIFEST)
    ours = {MANIFEST}
    if os.path.isfile(manifest):
        with open(manifest) as f:
            ours.update(line.strip() for line in f if line.strip())
    foreign = [p for p in _files(final) if p not in ours]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{flag}: {final} holds files this tool did not write ({foreign[0]}{more}); move them "
                         f"or choose another {flag} (nothing was changed)")


def replace_owned_dir(tmp: str, final: str, flag: str = "--out_dir") -> None:
    """Write ``tmp``'s manifest and move it to ``final``, replacing an older one only if it is ours."""
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        f.writelines(p + "\n" for p in _files(tmp))
    check_replaceable(final, flag)
    old = f"{final}.old-{os.getpid()}"
    if os.path.lexists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
