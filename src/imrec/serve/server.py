"""Running the service: ``imrec serve`` in one process, or in uvicorn worker processes.

Each worker process builds its own app (and loads its own copy of the model) from the settings
that :func:`serve` leaves in ``$IMREC_SERVE_SETTINGS``; their metrics are merged through files in
a private folder named in ``$PROMETHEUS_MULTIPROC_DIR`` (see :mod:`imrec.serve.metrics`).

Usage (serves until interrupted)::

    serve("runs/mnist-1/bundle", port=8000, workers=2)
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI

from .app import create_app
from .inputs import Limits
from .metrics import multiprocess_dir

SETTINGS_ENV = "IMREC_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app described by ``$IMREC_SERVE_SETTINGS`` (JSON): how each uvicorn worker builds it.

    Example:
        >>> os.environ[SETTINGS_ENV] = json.dumps({"source": str(bundle), "backend": "torch"})
        >>> app_from_env().state.model
        Model('cnn', task='classify', backend='torch', version='...')
        >>> del os.environ[SETTINGS_ENV]
    """
    settings = json.loads(os.environ[SETTINGS_ENV])
    limits = Limits(**settings.pop("limits", {}))
    return create_app(settings.pop("source"), limits=limits, **settings)


def serve(
    source: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    backend: str = "onnxruntime",
    max_batch: int = 32,
    max_wait_ms: float = 5,
    limits: Limits | None = None,
) -> None:
    """Serve a model over HTTP until interrupted (SIGINT/SIGTERM finish the requests in flight).

    With ``workers > 1`` each uvicorn worker process loads its own copy of the model, and
    ``/metrics`` reports the totals over all of them.

    Usage (serves until interrupted)::

        serve("runs/mnist-1/bundle", port=8000, workers=2)
    """
    import uvicorn

    settings = {"source": str(source), "backend": backend, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "limits": asdict(limits or Limits())}  # fmt: skip
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    if not Path(source).exists():
        raise FileNotFoundError(f"no such bundle, run folder or checkpoint: {source}")
    if workers <= 1:
        app = app_from_env()  # fails here, before the port opens, on a bad source
        uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=30)
        return
    config = uvicorn.Config("imrec.serve.server:app_from_env", factory=True, host=host, port=port,
                            workers=workers, timeout_graceful_shutdown=30)  # fmt: skip
    _run_workers(config)


def _run_workers(config) -> None:
    """uvicorn's worker processes on a socket that asyncio will give TCP_NODELAY, their metrics
    merged.

    ``uvicorn.run(workers=N)`` binds a socket whose ``proto`` is 0, and asyncio sets
    TCP_NODELAY only on sockets that say IPPROTO_TCP: the workers' responses (head and body
    written apart) then wait for the client's delayed ACK, ~40 ms each. Bound here instead.

    The metrics folder is made before the first worker starts (prometheus_client chooses its
    multiprocess mode when a worker imports it) and removed when the supervisor returns.
    """
    from uvicorn.supervisors import Multiprocess

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.set_inheritable(True)
    logging.getLogger("uvicorn.error").info(
        "imrec serve: %d workers on http://%s:%d", config.workers, config.host, config.port
    )
    with multiprocess_dir():
        _marking_dead_workers(Multiprocess)(config, sockets=[sock]).run()


def _marking_dead_workers(supervisor: type) -> type:
    """``supervisor`` (uvicorn's ``Multiprocess``), telling prometheus_client of workers that end.

    In its loop the supervisor replaces workers that died, and on SIGHUP (restart) and SIGTTOU
    (one fewer) ends live ones; after each round, the workers no longer among its processes are
    marked dead, so that the gauges of live workers only (requests in flight, the model's info)
    forget them. Counters and histograms keep what those workers counted.
    """
    from prometheus_client.multiprocess import mark_process_dead

    class Supervisor(supervisor):
        _pids: frozenset[int] = frozenset()

        def keep_subprocess_alive(self) -> None:
            super().keep_subprocess_alive()
            pids = frozenset(p.pid for p in self.processes)
            for pid in self._pids - pids:
                mark_process_dead(pid)
            self._pids = pids

    return Supervisor
