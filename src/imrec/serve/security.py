"""Who may use the service and how much: bearer tokens, request rates per client, security
headers, and keeping tokens out of URLs and logs.

:class:`Access` holds the settings; :class:`Gate` is the ASGI middleware that applies them to
every request before it reaches a route:

1. a token in the query string (``?token=...``, ``?access_token=...``) is refused (400
   ``token_in_query``): URLs end up in logs, histories and proxies; the access log shows it
   as ``[redacted]`` (:class:`RedactTokens`);
2. each client address (with ``trust_proxy``: the last ``X-Forwarded-For`` entry, the address
   the reverse proxy saw) has a token bucket of ``burst`` requests refilled at ``rate`` per
   second; an empty bucket answers 429 with ``Retry-After``. With tokens, each token has its
   own bucket too when ``token_rate`` is set. The health checks are never limited. Buckets
   live in each worker process (with ``--workers N`` a client may get up to N times the rate);
3. with tokens, ``/v1/*``, ``/metrics``, ``/docs``, ``/redoc`` and ``/openapi.json`` need
   ``Authorization: Bearer <token>`` (401 with ``WWW-Authenticate`` otherwise; compared in
   constant time); ``/healthz``, ``/readyz``, the page ``/`` and ``/static/*`` stay open (the
   page asks for the token and keeps it for the tab).

Every response carries a Content-Security-Policy that allows only the service's own scripts,
styles and connections (no inline script, no third-party origin; FastAPI's ``/docs`` and
``/redoc`` pages, which load Swagger UI and ReDoc from jsDelivr, get a policy that allows
that), and the usual headers against sniffing, framing and referrer leaks.

Example:
    >>> gate = Access(tokens=("s3cret",), rate=2, burst=2)
    >>> gate.authorised("Bearer s3cret"), gate.authorised("Bearer guess"), gate.authorised(None)
    (True, False, False)
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imrec.config import SERVE_BURST, SERVE_RATE

TOKEN_ENV = "IMREC_SERVE_TOKEN"
TOKEN_FILE = "serve-token"  # the generated token, under $IMREC_HOME
QUERY_TOKEN_KEYS = frozenset({"token", "access_token", "api_key", "apikey", "key", "bearer"})
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/favicon.ico"})
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
PROTECTED_PATHS = frozenset(
    {"/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}
)
DEFAULT_RATE, DEFAULT_BURST = SERVE_RATE, SERVE_BURST
MAX_CLIENTS = 10_000  # buckets kept before full (idle) ones are forgotten

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from jsDelivr with an inline
# script: they get their own, looser policy (they sit behind the token when there is one).
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
    "https://fastapi.tiangolo.com https://cdn.redoc.ly; connect-src 'self'; "
    "worker-src blob:; font-src https://fonts.gstatic.com; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), usb=()"),
]
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), *COMMON_HEADERS]
DOCS_HEADERS = [(b"content-security-policy", DOCS_CSP.encode()), *COMMON_HEADERS]

log = logging.getLogger("imrec.serve")


class AccessError(ValueError):
    """Settings that cannot be served safely as given (a missing or empty token file...)."""


@dataclass(frozen=True)
class Access:
    """How the service is guarded (see the module text).

    Attributes:
        tokens: accepted bearer tokens; empty: no authentication.
        rate: requests per second per client address (0: no limit).
        burst: how many requests a client may make at once before the rate applies.
        token_rate: requests per second per token (0: no limit per token).
        trust_proxy: take the client address from ``X-Forwarded-For`` (behind a reverse
            proxy that sets it); off by default, since any client can write that header.
        cors_origins: origins allowed to call the API from their pages (exact, e.g.
            ``https://app.example.com``); none by default.
    """

    tokens: tuple[str, ...] = ()
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    token_rate: float = 0.0
    trust_proxy: bool = False
    cors_origins: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.rate < 0 or self.token_rate < 0:
            raise AccessError("rate limits must be 0 (off) or positive")
        if self.burst < 1:
            raise AccessError(f"--burst must be at least 1, got {self.burst}")
        for origin in self.cors_origins:
            if origin == "*" or not re.fullmatch(r"https?://[^/\s]+", origin):
                raise AccessError(
                    f"--cors-origin {origin!r}: give an exact origin such as "
                    "https://app.example.com (scheme and host, no path, no wildcard)"
                )

    def authorised(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted token (constant
        time in the token's content; every token is compared)."""
        presented = bearer(header)
        if presented is None:
            return False
        given = presented.encode()
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(given, token.encode())
        return ok


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, None for any other.

    Example:
        >>> bearer("Bearer abc "), bearer("Basic abc"), bearer(None)
        ('abc', None, None)
    """
    if not header or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """The tokens of a token file: one per line, blank lines and ``#`` comments ignored.

    Raises:
        AccessError: no such file, unreadable, or no token in it.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AccessError(f"--token-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AccessError(f"--token-file {path}: cannot read it ({e})") from None
    tokens = tuple(t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#"))
    if not tokens:
        raise AccessError(f"--token-file {path}: no token in it (one per line)")
    if any(len(t) < 16 for t in tokens):
        raise AccessError(f"--token-file {path}: tokens must be at least 16 characters long")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users: chmod 600 %s", path, path)
    return tokens


def generated_token(home: Path) -> tuple[str, Path]:
    """The service's own token: made once (``secrets``, 256 bits), kept in ``home``/serve-token
    with owner-only permissions until the file is deleted."""
    path = home / TOKEN_FILE
    if path.is_file():
        return read_tokens(path)[0], path
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token, path


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_tokens(
    host: str, token_file: str | None, no_auth: bool, home: Path
) -> tuple[dict | None, str]:
    """Where the service's tokens come from (``{"file": PATH}`` or ``{"env": NAME}``, ``None``
    for no authentication) and a sentence for the log saying so. Checked here, so that a bad
    token file fails before the port opens; each worker process reads them again
    (:func:`load_tokens`), and no token is ever put in the settings, the log or a URL.

    ``--no-auth`` must be said explicitly to serve beyond loopback without a token; with no
    token given there, one is generated (see :func:`generated_token`).
    """
    if no_auth:
        if token_file:
            raise AccessError("--no-auth and --token-file contradict each other; choose one")
        return None, (
            f"authentication is OFF (--no-auth): anyone who can reach {host} can use the "
            "model, read /metrics and /v1/model"
        )
    if token_file:
        read_tokens(token_file)
        return {"file": str(Path(token_file).expanduser().resolve())}, (
            f"bearer tokens from {token_file}"
        )
    if os.environ.get(TOKEN_ENV, "").strip():
        load_tokens({"env": TOKEN_ENV})
        return {"env": TOKEN_ENV}, f"the bearer token in ${TOKEN_ENV}"
    if is_loopback(host):
        return None, f"no authentication on loopback ({host}); give --token-file to require one"
    _, path = generated_token(home)
    return {"file": str(path)}, (
        f"bearer token required: it is in {path} (owner-only; delete the file for a new one). "
        f"Clients send 'Authorization: Bearer <token>'; the page asks for it once"
    )


def load_tokens(source: dict | None) -> tuple[str, ...]:
    """The tokens named by :func:`resolve_tokens`' source (none for ``None``)."""
    if source is None:
        return ()
    if "file" in source:
        return read_tokens(source["file"])
    token = os.environ.get(source["env"], "").strip()
    if len(token) < 16:
        raise AccessError(f"${source['env']} must hold a token of at least 16 characters")
    return (token,)


class _Buckets:
    """Token buckets by key: ``burst`` capacity, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, float(burst)
        self.state: dict[str, tuple[float, float]] = {}  # key -> (tokens, time)

    def take(self, key: str, now: float) -> float:
        """0 when a request may go, else the seconds until it may."""
        tokens, then = self.state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self.state[key] = (tokens - 1.0, now)
            if len(self.state) > MAX_CLIENTS:
                self._forget(now)
            return 0.0
        self.state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget(self, now: float) -> None:
        """Drop the buckets that have filled up again (their clients went quiet)."""
        full = [
            k for k, (t, then) in self.state.items() if t + (now - then) * self.rate >= self.burst
        ]
        for k in full:
            del self.state[k]


def _protected(path: str) -> bool:
    return path.startswith("/v1/") or path in PROTECTED_PATHS


def _token_in_query(query: bytes) -> bool:
    if not query:
        return False
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return any(k.lower() in QUERY_TOKEN_KEYS for k, _ in pairs)


class Gate:
    """ASGI middleware applying an :class:`Access` (see the module text); ``on_reject(reason)``
    is called for each refused request (metrics)."""

    def __init__(self, app: ASGIApp, access: Access, on_reject=None):
        self.app, self.access = app, access
        self.on_reject = on_reject or (lambda reason: None)
        self.by_client = _Buckets(access.rate, access.burst) if access.rate > 0 else None
        self.by_token = (
            _Buckets(access.token_rate, access.burst)
            if access.tokens and access.token_rate > 0
            else None
        )

    def client(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        if self.access.trust_proxy:
            forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            last = forwarded.split(",")[-1].strip()
            if last:
                return last
        peer = scope.get("client")
        return peer[0] if peer else "unknown"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        extra = DOCS_HEADERS if scope["path"] in DOCS_PATHS else SECURITY_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        refusal = self._check(scope)
        if refusal is not None:
            self.on_reject(refusal[1])
            return await _refuse(send_with_headers, *refusal)
        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: Scope) -> tuple | None:
        """``(status, code, message, extra headers)`` of a refusal, or None to go on."""
        access, path = self.access, scope["path"]
        headers = dict(scope["headers"])
        if access.tokens and _token_in_query(scope.get("query_string", b"")):
            return (400, "token_in_query", "send the token in the Authorization header "
                    "('Authorization: Bearer <token>'), never in the URL", [])  # fmt: skip
        if path not in UNLIMITED_PATHS:
            now = time.monotonic()
            wait = self.by_client.take(self.client(scope, headers), now) if self.by_client else 0
            if wait:
                return _too_many(wait, "this client")
        if access.tokens and _protected(path):
            auth = headers.get(b"authorization", b"").decode("latin-1") or None
            if not access.authorised(auth):
                if bearer(auth) is None:  # no bearer token at all
                    return (401, "unauthorized", "this endpoint needs 'Authorization: Bearer "
                            "<token>' (imrec serve printed where the token is)",
                            [(b"www-authenticate", b'Bearer realm="imrec"')])  # fmt: skip
                return (401, "invalid_token", "the token was refused",
                        [(b"www-authenticate", b'Bearer realm="imrec", error="invalid_token"')])  # fmt: skip
            if self.by_token:
                wait = self.by_token.take(bearer(auth), time.monotonic())
                if wait:
                    return _too_many(wait, "this token")
        return None


def _too_many(wait: float, who: str) -> tuple:
    after = max(1, math.ceil(wait))
    return (429, "rate_limited", f"too many requests from {who}; retry in {after} s "
            "(imrec serve --rate-limit / --burst)", [(b"retry-after", str(after).encode())])  # fmt: skip


async def _refuse(send: Send, status: int, code: str, message: str, extra: list) -> None:
    import json

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


_QUERY_TOKEN = re.compile(
    r"([?&](?:" + "|".join(sorted(QUERY_TOKEN_KEYS)) + r")=)[^&\s\"]*", re.IGNORECASE
)


class RedactTokens(logging.Filter):
    """A logging filter: token values in query strings become ``[redacted]`` (uvicorn's access
    log writes each request's path with its query).

    Example:
        >>> record = logging.LogRecord("uvicorn.access", 20, "", 0, '%s "%s %s"', ("1.2.3.4",
        ...     "GET", "/v1/model?token=abc&x=1"), None)
        >>> RedactTokens().filter(record), record.getMessage()
        (True, '1.2.3.4 "GET /v1/model?token=[redacted]&x=1"')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _QUERY_TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = _QUERY_TOKEN.sub(r"\1[redacted]", record.msg)
        return True


def redact_access_log() -> None:
    """Install :class:`RedactTokens` on uvicorn's access log (once per process)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())
