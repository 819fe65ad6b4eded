"""Is the engine process still alive? Read from the pid file ``start.sh`` writes (``WORKER_ENGINE_PID_FILE``).

A dead engine must be noticed at once, not after a request timeout: the readiness poll and every retry ask
here first.
"""

from __future__ import annotations

import os
from pathlib import Path

from worker.errors import EngineUnavailable


class EngineProcess:
    """The engine process named by ``pid_file``; without one, the engine is assumed alive."""

    def __init__(self, pid_file: Path | None) -> None:
        self.pid_file = pid_file

    def pid(self) -> int | None:
        if self.pid_file is None:
            return None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_alive(self) -> bool:
        """Whether the process still runs (a zombie counts as dead); always True without a pid file."""
        if self.pid_file is None:
            return True
        pid = self.pid()
        if pid is None or pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True  # no /proc (not Linux) or it vanished between the two calls: trust kill()
        state = stat.rpartition(")")[2].split()[:1]
        return state not in (["Z"], ["X"])

    def dead_error(self) -> EngineUnavailable:
        pid = self.pid()
        who = f"pid {pid}" if pid is not None else f"no valid pid in {self.pid_file}"
        return EngineUnavailable(
            f"the engine process exited ({who}); the worker must be restarted",
            details={"pid": pid, "pid_file": str(self.pid_file)},
        )
