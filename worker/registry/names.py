"""File-name safety: every name that becomes a path goes through here (catalogue, references, servers)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from worker.errors import InputInvalid

_BAD_CHARS = re.compile(r"[\x00-\x1f\\:*?\"<>|]")


def safe_relative_name(name: str, *, what: str = "file name") -> str:
    """Return ``name`` as a normalised relative POSIX path, refusing anything that could escape a folder.

    Refused: absolute paths, ``..`` or empty components, backslashes, control characters, hidden
    components (a leading dot is how we name temp and lock files) and drive letters.

    Raises:
        InputInvalid: naming the offending value.
    """
    if not name or len(name) > 255 or _BAD_CHARS.search(name):
        raise InputInvalid(f"unsafe {what} {name!r}: empty, too long or has forbidden characters")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("~"):
        raise InputInvalid(f"unsafe {what} {name!r}: absolute paths are not allowed")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise InputInvalid(f"unsafe {what} {name!r}: path traversal or hidden component")
    return "/".join(parts)


def contained_path(root: Path, name: str, *, what: str = "file name") -> Path:
    """``root / name`` after checking ``name`` and that the result (symlinks resolved) stays in ``root``."""
    rel = safe_relative_name(name, what=what)
    target = (root / rel).resolve()
    base = root.resolve()
    if target != base and base not in target.parents:
        raise InputInvalid(f"unsafe {what} {name!r}: resolves outside {base.name}/")
    return root / rel


def stem(file_name: str) -> str:
    """A1111's LoRA/embedding name: the base name without extension."""
    base = file_name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def normalise(text: str) -> str:
    """Loose key: lower case, letters and digits only ("Detail Tweaker XL" == "detail_tweaker_xl")."""
    return re.sub(r"[^0-9a-z]+", "", text.lower())
