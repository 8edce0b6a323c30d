"""Serve a model over HTTP: the FastAPI app, its batching, metrics and limits, and the web page.

Example:
    >>> from imrec.serve import create_app, serve
    >>> serve("runs/mnist-1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

from .app import create_app
from .inputs import Limits
from .server import app_from_env, serve

__all__ = ["Limits", "app_from_env", "create_app", "serve"]
