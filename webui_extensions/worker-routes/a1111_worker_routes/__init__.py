"""``/worker/v1`` routes inside A1111 (the logic; ``scripts/worker_routes.py`` is the A1111 glue).

This package runs in A1111's own Python (fastapi 0.94, pydantic 1), so it uses only the standard
library and the FastAPI/Starlette API common to old and new versions. It never imports ``worker``:
health is read from A1111's state in-process; the job and registry routes are forwarded to
``python -m worker.routes_server`` (``WORKER_MODE=api``), which runs the worker's real job path.
"""

from a1111_worker_routes.health import a1111_health, health_from_modules
from a1111_worker_routes.proxy import forward
from a1111_worker_routes.routes import PREFIX, register_routes

__all__ = ["PREFIX", "a1111_health", "forward", "health_from_modules", "register_routes"]
