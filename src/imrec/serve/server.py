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

from imrec.core.checks import AT_LEAST_1, Range, check_number
from imrec.data.sources import imrec_home

from .app import create_app
from .batching import check_batching
from .inputs import Limits
from .metrics import multiprocess_dir
from .security import Access, AccessError, load_tokens, resolve_tokens

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
    access = settings.pop("access", None)
    if access is not None:
        tokens = load_tokens(access.pop("tokens_from", None))
        access = Access(tokens=tokens, **{**access, "cors_origins": tuple(access["cors_origins"])})
    return create_app(settings.pop("source"), limits=limits, access=access, **settings)


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
    token_file: str | None = None,
    no_auth: bool = False,
    access: Access | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> None:
    """Serve a model over HTTP until interrupted (SIGINT/SIGTERM finish the requests in flight).

    With ``workers > 1`` each uvicorn worker process loads its own copy of the model, and
    ``/metrics`` reports the totals over all of them (rate limits are counted per worker).

    Tokens (:func:`~imrec.serve.security.resolve_tokens`): ``token_file``, else
    ``$IMREC_SERVE_TOKEN``, else, on a host other than loopback, a token generated into
    ``$IMREC_HOME/serve-token``; ``no_auth=True`` serves without one (said in the log).
    ``access``: rate limits, proxy trust and CORS origins (its ``tokens`` are ignored: they
    come from the sources above). ``tls_cert``/``tls_key``: PEM files to serve HTTPS.

    A ``port`` outside 1-65535, ``workers`` or ``max_batch`` under 1 or a negative
    ``max_wait_ms`` raises ValueError before anything starts.

    Usage (serves until interrupted)::

        serve("runs/mnist-1/bundle", port=8000, workers=2)
    """
    import uvicorn

    if not Path(source).exists():
        raise FileNotFoundError(f"no such bundle, run folder or checkpoint: {source}")
    check_number(port, "port (--port)", Range(1, 65535), whole=True)
    check_number(workers, "workers (--workers)", AT_LEAST_1, whole=True)
    check_batching(max_batch, max_wait_ms)
    tls = _tls_files(tls_cert, tls_key)
    tokens_from, how = resolve_tokens(host, token_file, no_auth, imrec_home())
    access = access or Access()
    # The settings name where each worker reads the tokens, never the tokens themselves.
    guard = {k: v for k, v in asdict(access).items() if k != "tokens"} | {
        "tokens_from": tokens_from
    }
    settings = {"source": str(source), "backend": backend, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "limits": asdict(limits or Limits()),
                "access": guard}  # fmt: skip
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    scheme = "https" if tls else "http"
    level = logging.WARNING if no_auth else logging.INFO
    _say(level, f"imrec serve: {scheme}://{host}:{port}/ ; {how}; {_limits_sentence(access)}")
    if workers <= 1:
        app = app_from_env()  # fails here, before the port opens, on a bad source
        uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=30, **tls)
        return
    config = uvicorn.Config("imrec.serve.server:app_from_env", factory=True, host=host, port=port,
                            workers=workers, timeout_graceful_shutdown=30, **tls)  # fmt: skip
    _run_workers(config)


def _tls_files(cert: str | None, key: str | None) -> dict:
    """uvicorn's TLS settings, checked: both files or neither."""
    if not cert and not key:
        return {}
    if not (cert and key):
        raise AccessError("--tls-cert and --tls-key go together (PEM certificate and its key)")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).expanduser().is_file():
            raise AccessError(f"{flag} {path}: no such file")
    return {
        "ssl_certfile": str(Path(cert).expanduser()),
        "ssl_keyfile": str(Path(key).expanduser()),
    }


def _limits_sentence(access: Access) -> str:
    if access.rate <= 0:
        return "no rate limit"
    per_token = f", {access.token_rate:g}/s per token" if access.token_rate else ""
    proxy = " (client = last X-Forwarded-For)" if access.trust_proxy else ""
    return (
        f"rate limit {access.rate:g} requests/s per client{proxy}, bursts of {access.burst}"
        f"{per_token}, per worker process"
    )


def _say(level: int, message: str) -> None:
    """A line for the person starting the service: on stderr and in the log."""
    import sys

    print(message, file=sys.stderr, flush=True)
    logging.getLogger("imrec.serve").log(level, message)


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
