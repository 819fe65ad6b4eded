"""``python -m worker``: start the RunPod worker, or ``python -m worker registry ...`` for the CLI.

The worker only takes jobs once the engine answers and has loaded its checkpoint: a worker that
cannot reach a ready engine within WORKER_READY_TIMEOUT_S exits non-zero so RunPod replaces it,
instead of sitting billed and unready. RunPod's own flags (``--rp_serve_api``, ``--test_input``)
pass through to ``runpod.serverless.start`` unchanged.
"""

from __future__ import annotations

import logging
import sys

from worker.errors import WorkerError
from worker.handler import JobRunner, async_handler, set_runner
from worker.logs import settings_with_logging
from worker.startup import prepare_engine

log = logging.getLogger("worker")


def main(argv: list[str]) -> int:
    if argv[:1] == ["registry"]:
        from worker.registry.cli import main as registry_main

        return registry_main(argv[1:])
    settings = settings_with_logging()
    if settings is None:
        return 2
    runner = JobRunner.from_settings(settings)
    try:
        timeline = prepare_engine(runner, settings)
    except WorkerError as exc:
        log.error("engine never became ready: %s", exc)
        return 1
    log.info("engine ready after %.1f s; taking jobs", timeline.total_s)
    set_runner(runner)

    import runpod

    if "--rp_log_level" not in sys.argv:
        sys.argv += ["--rp_log_level", settings.log_level]  # the SDK's DEBUG default logs every image
    runpod.serverless.start({"handler": async_handler})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
