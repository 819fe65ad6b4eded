"""Write ``constraints.txt``: every installed package at the version the tests passed with.

``make setup`` installs with ``pip install -c constraints.txt``, so CI and a newcomer get these versions, not
whatever the registry resolves that day (a fresh install once drifted from the tested versions unnoticed).
After changing pyproject.toml's dependencies: ``make lock`` (this script, run by the venv's Python), run
``make test``, commit both. Local version labels are dropped (``torch==2.13.0+cpu`` becomes ``torch==2.13.0``:
the CPU wheel's label exists only on PyTorch's own index; ``make setup`` picks the build).

    .venv/bin/python scripts/freeze_constraints.py [--out constraints.txt]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Exact versions `make setup` installs (pip install -c constraints.txt): the ones `make test` passed with.
# Written by `make lock` (scripts/freeze_constraints.py) on Python {python}; do not edit by hand.
# On another Python minor version some pins may not exist: `make setup CONSTRAINTS=` resolves afresh.
"""


def pinned_lines(freeze_output: str) -> list[str]:
    """``pip freeze`` lines as ``name==version`` without local labels; editable and path installs left out."""
    lines = []
    for line in freeze_output.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-e ")) or "==" not in line or " @ " in line:
            continue
        name, _, version = line.partition("==")
        lines.append(f"{name}=={version.split('+', 1)[0]}")
    return sorted(lines, key=str.lower)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args(argv)
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    text = HEADER.format(python=platform.python_version()) + "\n".join(pinned_lines(frozen)) + "\n"
    args.out.write_text(text, encoding="utf-8")
    sys.stderr.write(f"wrote {args.out} ({len(pinned_lines(frozen))} packages)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
