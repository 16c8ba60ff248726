"""`iapo serve`: an OpenAI-compatible gateway that applies a learned policy per request."""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:  # the app (starlette, numpy) only when it is asked for
    if name == "ServeConfig":
        from iapo.settings import ServeConfig

        return ServeConfig
    if name == "create_app":
        from iapo.serve.app import create_app

        return create_app
    raise AttributeError(name)
