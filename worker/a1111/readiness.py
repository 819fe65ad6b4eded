"""Is the engine ready for jobs? A1111 has no readiness endpoint: it listens before its model is loaded.

So: poll ``GET /sd-models`` until a 200 (a dead engine process or refused credentials end the wait at
once), then run one tiny txt2img, which blocks until the default checkpoint is loaded. Both share one
deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import requests

from worker.a1111.process import EngineProcess
from worker.a1111.responses import summarise_body
from worker.a1111.transport import Transport, transport_reason
from worker.clock import SYSTEM_CLOCK, Clock
from worker.errors import EngineUnavailable, JobTimeout, OutOfMemory, WorkerError

log = logging.getLogger(__name__)

#: The tiny generation that makes A1111 finish loading its default checkpoint (it blocks until then).
WARMUP_PAYLOAD: dict[str, Any] = {
    "prompt": "warm-up",
    "steps": 1,
    "width": 64,
    "height": 64,
    "batch_size": 1,
    "n_iter": 1,
    "send_images": False,
    "save_images": False,
}
POLL_INTERVAL_S = 0.5

#: ``txt2img(payload, timeout_s=...)``: the client's generation call, so the warm-up maps errors like a job
Generate = Callable[..., dict[str, Any]]


class Readiness:
    """Waits for one engine; see the module docstring."""

    def __init__(
        self, transport: Transport, process: EngineProcess, generate: Generate, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._transport = transport
        self._process = process
        self._generate = generate
        self._clock = clock

    def wait(self, timeout_s: float, *, warmup: bool = True) -> float:
        """Block until the engine answers and (with ``warmup``) has loaded its default checkpoint.

        Returns:
            `float`: seconds taken.

        Raises:
            EngineUnavailable: at once if the engine process exits or refuses the credentials; at the deadline
                with the last error; when the warm-up generation fails (the default checkpoint did not load).
        """
        started = self._clock.monotonic()
        deadline = started + timeout_s
        self._poll_until_listening(timeout_s, deadline)
        listening = self._clock.monotonic()
        log.info("A1111 answers %s after %.2f s", self._what, listening - started)
        if warmup:
            self._warm_up(timeout_s, deadline)
            log.info("A1111 warm-up txt2img took %.2f s", self._clock.monotonic() - listening)
        took = self._clock.monotonic() - started
        log.info("A1111 ready in %.2f s", took)
        return took

    @property
    def _what(self) -> str:
        return self._transport.what("GET", "sd-models")

    def _poll_until_listening(self, timeout_s: float, deadline: float) -> None:
        last_error = "no answer yet"
        while True:
            if not self._process.is_alive():
                raise self._process.dead_error()
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise EngineUnavailable(
                    f"A1111 at {self._transport.public_base} was not ready within the {timeout_s:.3g} s "
                    f"deadline; last error: {last_error}",
                    details={"deadline_s": timeout_s, "last_error": last_error},
                )
            error = self._poll_once(remaining)
            if error is None:
                return
            last_error = error
            self._clock.sleep(max(0.0, min(POLL_INTERVAL_S, deadline - self._clock.monotonic())))

    def _poll_once(self, remaining: float) -> str | None:
        """None when the engine answered 200, else why not."""
        transport = self._transport
        timeout = (min(transport.connect_timeout_s, remaining), min(transport.request_timeout_s, remaining))
        try:
            response = transport.request_once("GET", "sd-models", timeout=timeout)
        except requests.RequestException as exc:
            return f"{self._what}: {transport_reason(exc)}"
        if response.status_code == 200:
            return None
        error = f"{self._what}: HTTP {response.status_code} {summarise_body(response.text)}"
        if response.status_code in (401, 403):
            raise EngineUnavailable(
                f"A1111 refused the worker's credentials ({error}); check WORKER_A1111_AUTH"
            )
        return error

    def _warm_up(self, timeout_s: float, deadline: float) -> None:
        remaining = deadline - self._clock.monotonic()
        if remaining <= 0:
            raise EngineUnavailable(f"no time left for the warm-up within the {timeout_s:.3g} s deadline")
        try:
            self._generate(dict(WARMUP_PAYLOAD), timeout_s=remaining)
        except (EngineUnavailable, OutOfMemory):
            raise
        except JobTimeout:
            raise EngineUnavailable(
                f"the warm-up txt2img did not finish within the {timeout_s:.3g} s readiness deadline "
                "(default checkpoint still loading?)",
                details={"deadline_s": timeout_s},
            ) from None
        except WorkerError as exc:
            detail = exc.details.get("detail", exc.message)
            raise EngineUnavailable(
                f"default checkpoint failed to load: {detail}", details=exc.details
            ) from exc
