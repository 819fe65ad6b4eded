"""Which files below a models folder may be read as models: one policy for the registry and both engines.

A model file is a *regular* file whose real path (symlinks resolved) lies inside the models folder or
inside the kind folder it is listed under. Anything else is listed as unusable with the reason and
never opened:

* a FIFO, socket or device (``open`` on a FIFO blocks forever; ``/dev/zero`` never ends);
* a symlink leading out of the models folder (``/etc/passwd`` linked as a VAE must not be hashed or served);
* a dangling symlink.

Only ``stat`` calls here: deciding costs no read of the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS_OF_FILE = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def real_roots(*roots: Path) -> tuple[Path, ...]:
    """The roots with symlinks resolved (a models folder that is itself a link is fine)."""
    return tuple(dict.fromkeys(Path(os.path.realpath(root)) for root in roots))


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def unreadable_reason(path: Path, roots: tuple[Path, ...]) -> str | None:
    """Why ``path`` must not be read as a model, or None when it is a regular file inside ``roots``.

    ``roots`` come from ``real_roots`` (already resolved).
    """
    if not _inside(Path(os.path.realpath(path)), roots):
        return "symlink to a file outside the models folder; refused (copy the file in instead)"
    try:
        info = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            return "dangling symlink (its target does not exist)"
        return f"unreadable: {exc.strerror or exc}"
    if stat.S_ISREG(info.st_mode):
        return None
    what = next((label for test, label in _KINDS_OF_FILE if test(info.st_mode)), "not a regular file")
    return f"{what}, not a regular file; refused"
