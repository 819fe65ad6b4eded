"""The one error shape of a bad input image: which image, and why."""

from __future__ import annotations

from worker.errors import InputInvalid


def refuse(where: str, why: str) -> InputInvalid:
    return InputInvalid(f"{where}: {why}; nothing was generated", details={"image": where})
