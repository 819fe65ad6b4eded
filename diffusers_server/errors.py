"""The engine's errors: a refused request with its HTTP status (A1111's shape), a model that cannot load."""

from __future__ import annotations


class RequestRefused(Exception):
    """A request this engine will not (or cannot yet) honour: 4xx for bad input, 503 before a model is ready.

    ``app.py`` renders it in A1111's ``{"error", "detail", "body", "errors"}`` shape; nothing else does.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ModelLoadError(RuntimeError):
    """A checkpoint or VAE that this engine cannot load (wrong architecture, missing tokenizer, bad file)."""
