"""`iapo serve`: an OpenAI-compatible gateway that applies a learned policy per request."""

from __future__ import annotations

from iapo.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
