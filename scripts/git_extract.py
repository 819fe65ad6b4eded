"""Write one commit's tree from a git repository into a folder, like ``git archive COMMIT | tar -x``.

Unlike ``git archive`` it tolerates blobs the repository does not hold (partial clones and snapshots
leave out large sample images A1111 never reads) and says which were skipped. Used by setup_a1111.sh.

usage: git_extract.py GIT_DIR COMMIT DEST
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("git_extract")


def git_dir_of(path: Path) -> Path:
    """A bare repository is its own git dir; a work tree keeps it in ``.git``."""
    return path / ".git" if (path / ".git").exists() else path


def extract(repository: Path, commit: str, dest: Path) -> list[str]:
    """Write ``commit``'s files under ``dest``; returns the paths whose blobs were missing."""
    git = ["git", "--git-dir", str(git_dir_of(repository))]
    listing = subprocess.run(
        [*git, "ls-tree", "-r", "-z", "--full-tree", commit], check=True, capture_output=True
    )
    entries = []
    for record in listing.stdout.split(b"\0"):
        if record:
            meta, path = record.split(b"\t", 1)
            mode, kind, sha = meta.decode().split()
            if kind == "blob":
                entries.append((mode, sha, path.decode()))
    missing: list[str] = []
    with subprocess.Popen(
        [*git, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as batch:
        assert batch.stdin is not None and batch.stdout is not None
        for mode, sha, path in entries:
            batch.stdin.write(f"{sha}\n".encode())
            batch.stdin.flush()
            header = batch.stdout.readline().decode().split()
            if len(header) < 3 or header[1] == "missing":
                missing.append(path)
                continue
            data = batch.stdout.read(int(header[2]))
            batch.stdout.read(1)  # the newline after each object
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "120000":
                target.unlink(missing_ok=True)
                target.symlink_to(data.decode())
            else:
                target.write_bytes(data)
                if mode == "100755":
                    target.chmod(0o755)
        batch.stdin.close()
    return missing


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(argv) != 3:
        log.error("usage: git_extract.py GIT_DIR COMMIT DEST")
        return 2
    repository, commit, dest = Path(argv[0]), argv[1], Path(argv[2])
    missing = extract(repository, commit, dest)
    shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
    log.info(
        "%s@%s extracted%s",
        repository,
        commit[:10],
        f"; {len(missing)} blobs missing: {shown}" if missing else "",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
