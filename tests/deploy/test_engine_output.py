"""The engine's output as start.sh forwards it: each line at once, prefixed, with the credentials redacted.

Found by running the image: the forwarding went through awk, and mawk (the awk of Debian and Ubuntu, so of the
image) holds piped input back in 4 KB blocks, so A1111's start-up log appeared only when the block filled or the
engine exited. A stand-in ``launch.py`` prints its arguments, then keeps running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = "tester:s3cret-pass"
FAKE_LAUNCH = """import sys, time
print("fake A1111 started with " + " ".join(sys.argv[1:]), flush=True)
time.sleep(120)
"""


def test_engine_lines_arrive_at_once_and_redacted(tmp_path: Path) -> None:
    (tmp_path / "a1111").mkdir()
    (tmp_path / "a1111" / "launch.py").write_text(FAKE_LAUNCH)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "A1111_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        WORKER_ENGINE="a1111",
        WORKER_MODE="api",
        WORKER_SKIP_GPU_CHECK="1",
        WORKER_EXPOSE_ENGINE="1",
        A1111_API_AUTH=CREDENTIALS,
        A1111_DIR=str(tmp_path / "a1111"),
        A1111_PYTHON=sys.executable,
        A1111_DATA_DIR=str(tmp_path / "data"),
        WORKER_MODELS_DIR=str(tmp_path / "models"),
        WORKER_ENGINE_PID_FILE=str(tmp_path / "engine.pid"),
        WORKER_ROUTES_PORT="0",
        WORKER_ENGINE_PORT="17999",
    )
    log = tmp_path / "start.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(ROOT / "start.sh")], env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 20
        while "[engine] fake A1111 started" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"engine line not forwarded while it runs:\n{log.read_text()}"
            time.sleep(0.1)
        line = next(x for x in log.read_text().splitlines() if x.startswith("[engine] fake A1111 started"))
        assert "--api-auth <redacted>" in line and "s3cret" not in log.read_text(), line
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
