"""What every job sends for the engine settings it leaves unset, so it never inherits an earlier job's.

The one stateful piece of the translation (``worker.translate`` stays pure): the handler keeps one
``SettingsBaseline`` per engine and passes ``defaults()`` to ``build_txt2img_payload``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

#: Engine settings sent on every job, defaults included (docs/decisions.md, "a job never changes later jobs").
MANAGED_SETTINGS: tuple[str, ...] = ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae")
#: What a job that leaves clip skip or VAE unset gets: A1111's built-in defaults, whatever the engine's
#: current settings say (an earlier request may have left them changed).
MANAGED_DEFAULTS: dict[str, Any] = {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}


class SettingsBaseline:
    """What a job sends for every engine setting it leaves unset, so it never inherits an earlier job's.

    A1111 keeps an override whose key is missing from its ``opts.data`` (``config.json`` plus what was set
    since), and every override when ``override_settings_restore_afterwards`` is false. So every job sends:
    clip skip and VAE (``MANAGED_DEFAULTS``), the checkpoint the engine had selected when the worker first
    looked, and, for each other setting some job has overridden, the value the engine had then.
    Thread-safe: the routes server runs jobs from several threads.

    Args:
        options: the engine's ``GET /options``; keys it does not list cannot be restored and are not tracked.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._values = {key: _whole_number(value) for key, value in options.items()}
        self._values.update(MANAGED_DEFAULTS)
        self._tracked = set(MANAGED_SETTINGS)
        self._lock = threading.Lock()

    def defaults(self) -> dict[str, Any]:
        with self._lock:
            keys = sorted(self._tracked)
        return {key: self._values[key] for key in keys if self._values.get(key) is not None}

    def track(self, overrides: Mapping[str, Any]) -> None:
        """Remember the keys a job is about to override, so later jobs send them back."""
        with self._lock:
            self._tracked.update(key for key in overrides if key in self._values)


def _whole_number(value: Any) -> Any:
    """``/options`` types clip skip as a float (``2.0``); A1111 indexes hidden states with it: send ``2``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
