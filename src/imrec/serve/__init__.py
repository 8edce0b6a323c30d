"""Serve a model over HTTP: the FastAPI app, its batching, metrics and limits, and the web page.

Usage (serves until interrupted)::

    from imrec.serve import serve

    serve("runs/mnist-1/bundle", port=8000)  # http://127.0.0.1:8000/
"""

from __future__ import annotations

from .app import create_app
from .inputs import Limits
from .security import Access, AccessError
from .server import app_from_env, serve

__all__ = ["Access", "AccessError", "Limits", "app_from_env", "create_app", "serve"]
