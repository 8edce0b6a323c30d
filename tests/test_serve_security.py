"""Serving beyond localhost: tokens, TLS, rate limits per client, security headers and CORS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import stat
import subprocess
import sys
import time

import httpx
import pytest
from test_serve import b64, free_port, png_bytes, wait_ready

from imrec.serve import Access, AccessError, create_app
from imrec.serve.security import (
    CSP,
    DOCS_CSP,
    TOKEN_ENV,
    RedactTokens,
    generated_token,
    resolve_tokens,
)

TOKEN = "test-token-0123456789abcdef"
PROTECTED = [("GET", "/v1/model"), ("GET", "/metrics"), ("GET", "/docs"),
             ("GET", "/openapi.json"), ("POST", "/v1/predict"), ("POST", "/v1/explain")]  # fmt: skip
OPEN = ["/healthz", "/readyz", "/", "/static/app.js", "/static/app.css"]


@contextlib.asynccontextmanager
async def clients(app, *addresses: str):
    """One httpx client per client address, all talking to ``app`` in process."""
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as stack:
        out = []
        for address in addresses:
            transport = httpx.ASGITransport(app=app, client=(address, 1234))
            out.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://imrec")
                )
            )
        yield out


def run(coro):
    return asyncio.run(coro)


def digit_png() -> bytes:
    """A digit from scikit-learn's set, 32x32 PNG (light ink on dark)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    grey = (load_digits().images[0] * 255 / 16).astype(np.uint8)
    return png_bytes(Image.fromarray(grey).resize((32, 32)))


def test_protected_endpoints_refuse_missing_wrong_and_query_tokens(digits_run):
    app = create_app(digits_run, backend="torch", access=Access(tokens=(TOKEN,), rate=0))
    image = b64(digit_png())
    bodies = {"/v1/predict": {"images": [image]}, "/v1/explain": {"image": image}}

    async def go():
        async with clients(app, "10.0.0.1") as (c,):
            seen = {}
            for method, path in PROTECTED:
                kw = {"json": bodies[path]} if method == "POST" else {}
                seen[path, "none"] = await c.request(method, path, **kw)
                seen[path, "wrong"] = await c.request(
                    method, path, headers={"Authorization": "Bearer not-the-token-at-all"}, **kw
                )
                seen[path, "query"] = await c.request(method, f"{path}?token={TOKEN}", **kw)
                seen[path, "basic"] = await c.request(
                    method, path, headers={"Authorization": f"Basic {TOKEN}"}, **kw
                )
                seen[path, "good"] = await c.request(
                    method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **kw
                )
            for path in OPEN:
                seen[path, "open"] = await c.get(path)
            metrics = await c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            return seen, metrics.text

    seen, metrics = run(go())
    for _, path in PROTECTED:
        none, wrong, query = seen[path, "none"], seen[path, "wrong"], seen[path, "query"]
        assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
        assert none.headers["www-authenticate"] == 'Bearer realm="imrec"'
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_token"
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert seen[path, "basic"].status_code == 401
        assert query.status_code == 400 and query.json()["error"]["code"] == "token_in_query"
        for r in (none, wrong, query):
            assert TOKEN not in r.text and TOKEN not in str(r.headers)
        assert seen[path, "good"].status_code == 200, (path, seen[path, "good"].text)
    for path in OPEN:
        assert seen[path, "open"].status_code == 200, path
    n = len(PROTECTED)
    for reason, count in (("unauthorized", 2 * n), ("invalid_token", n), ("token_in_query", n)):
        assert f'imrec_rejected_requests_total{{reason="{reason}"}} {count:.1f}' in metrics


def test_without_tokens_nothing_is_asked(digits_run):
    app = create_app(digits_run, backend="torch")

    async def go():
        async with clients(app, "10.0.0.1") as (c,):
            return [(await c.get(p)).status_code for p in ("/v1/model", "/metrics", "/docs")]

    assert run(go()) == [200, 200, 200]


def test_a_client_over_its_limit_gets_429_while_another_is_served(digits_run):
    app = create_app(digits_run, backend="torch", access=Access(rate=0.5, burst=3))

    async def go():
        async with clients(app, "10.0.0.1", "10.0.0.2") as (greedy, other):
            flood = [(await greedy.get("/v1/model")) for _ in range(6)]
            meanwhile = [(await other.get("/v1/model")).status_code for _ in range(3)]
            health = (await greedy.get("/healthz")).status_code
            return flood, meanwhile, health

    flood, meanwhile, health = run(go())
    assert [r.status_code for r in flood] == [200, 200, 200, 429, 429, 429]
    limited = flood[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    assert meanwhile == [200, 200, 200] and health == 200
    assert app.state.metrics.value("imrec_rejected_requests_total", reason="rate_limited") == 3


def test_the_proxy_header_counts_only_when_trusted(digits_run):
    def statuses(trust: bool) -> list[int]:
        app = create_app(digits_run, backend="torch",
                         access=Access(rate=0.01, burst=1, trust_proxy=trust))  # fmt: skip

        async def go():
            async with clients(app, "10.0.0.9") as (c,):
                out = []
                for client in ("1.1.1.1", "2.2.2.2", "1.1.1.1"):
                    h = {"X-Forwarded-For": f"6.6.6.6, {client}"}  # the proxy appends the last
                    out.append((await c.get("/v1/model", headers=h)).status_code)
                return out

        return run(go())

    assert statuses(trust=True) == [200, 200, 429]  # two clients behind one proxy
    assert statuses(trust=False) == [200, 429, 429]  # the header is anyone's to write


def test_tokens_per_token_limit(digits_run):
    other = "another-token-0123456789"
    app = create_app(digits_run, backend="torch",
                     access=Access(tokens=(TOKEN, other), rate=0, token_rate=0.01, burst=2))  # fmt: skip

    async def go():
        async with clients(app, "10.0.0.1", "10.0.0.2") as (a, b):
            mine = [(await a.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"})).status_code
                    for _ in range(3)]  # fmt: skip
            same_token = (
                await b.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"})
            ).status_code
            theirs = (
                await b.get("/v1/model", headers={"Authorization": f"Bearer {other}"})
            ).status_code
            return mine, same_token, theirs

    assert run(go()) == ([200, 200, 429], 429, 200)


def test_every_response_has_the_security_headers_and_the_page_no_inline_script(digits_run):
    app = create_app(digits_run, backend="torch")

    async def go():
        async with clients(app, "10.0.0.1") as (c,):
            paths = ("/", "/static/app.js", "/v1/model", "/nothing", "/docs")
            return {p: await c.get(p) for p in paths}

    answers = run(go())
    docs = answers.pop("/docs")
    assert docs.headers["content-security-policy"] == DOCS_CSP  # Swagger UI from jsDelivr
    assert "cdn.jsdelivr.net" in docs.text and docs.headers["x-frame-options"] == "DENY"
    for path, r in answers.items():
        h = r.headers
        assert h["content-security-policy"] == CSP, path
        assert (h["x-content-type-options"], h["x-frame-options"]) == ("nosniff", "DENY")
        assert h["referrer-policy"] == "no-referrer"
        assert "access-control-allow-origin" not in h
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "http" not in CSP
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    page = answers["/"].text
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all("src=" in s for s in scripts), "only scripts from files"
    assert not re.search(r"\son[a-z]+\s*=", page), "no inline event handlers"
    assert not re.search(r"\sstyle\s*=", page), "no inline styles"
    js = answers["/static/app.js"].text
    assert "eval(" not in js and "new Function" not in js
    assert "sessionStorage" in js and "localStorage" not in js  # the token lives for the tab


def test_cors_is_off_by_default_and_exact_when_configured(digits_run):
    site = "https://app.example.com"

    def preflight(access: Access | None, origin: str) -> httpx.Response:
        app = create_app(digits_run, backend="torch", access=access)

        async def go():
            async with clients(app, "10.0.0.1") as (c,):
                return await c.options("/v1/predict", headers={
                    "Origin": origin, "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type"})  # fmt: skip

        return run(go())

    assert "access-control-allow-origin" not in preflight(None, site).headers
    allowed = preflight(Access(tokens=(TOKEN,), cors_origins=(site,)), site)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == site
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = preflight(Access(tokens=(TOKEN,), cors_origins=(site,)), "https://evil.example")
    assert "access-control-allow-origin" not in other.headers
    with pytest.raises(AccessError, match="exact origin"):
        Access(cors_origins=("*",))


def test_token_sources_and_the_generated_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    home = tmp_path / "home"
    assert resolve_tokens("127.0.0.1", None, False, home)[0] is None  # loopback: open
    source, how = resolve_tokens("0.0.0.0", None, False, home)
    path = home / "serve-token"
    assert source == {"file": str(path)} and str(path) in how
    token = path.read_text().strip()
    assert len(token) >= 40 and token not in how
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_tokens("192.168.1.5", None, False, home)[0] == source  # kept across restarts
    assert generated_token(home)[0] == token
    source, how = resolve_tokens("0.0.0.0", None, True, home)
    assert source is None and "OFF" in how
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert resolve_tokens("0.0.0.0", None, False, home)[0] == {"env": TOKEN_ENV}
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(AccessError, match="at least 16"):
        resolve_tokens("0.0.0.0", None, False, home)
    with pytest.raises(AccessError, match="no such file"):
        resolve_tokens("0.0.0.0", str(tmp_path / "missing"), False, home)
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(AccessError, match="no token in it"):
        resolve_tokens("0.0.0.0", str(tmp_path / "empty"), False, home)
    with pytest.raises(AccessError, match="contradict"):
        resolve_tokens("0.0.0.0", str(path), True, home)


def test_query_tokens_are_redacted_from_the_access_log():
    import logging

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", f"/v1/model?access_token={TOKEN}&top_k=3", "1.1", 400), None,
    )  # fmt: skip
    assert RedactTokens().filter(record)
    assert (
        TOKEN not in record.getMessage()
        and "access_token=[redacted]&top_k=3" in record.getMessage()
    )


def _serve(args: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "imrec", "serve", *args, "--port", str(port), "--backend", "torch"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **env))  # fmt: skip
    return proc, port


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_a_served_token_is_checked_and_never_logged(digits_run, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# clients\n{TOKEN}\n")
    token_file.chmod(0o600)
    proc, port = _serve([str(digits_run), "--token-file", str(token_file)], {})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        assert httpx.get(url + "/v1/model").status_code == 401
        assert httpx.get(url + f"/v1/model?token={TOKEN}").status_code == 400
        ok = httpx.get(url + "/v1/model", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
    finally:
        log = _stop(proc)
    assert f"bearer tokens from {token_file}" in log
    assert "token=[redacted]" in log and TOKEN not in log, log


def test_tls_serves_https_and_plain_http_gets_no_answer(digits_run, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    proc, port = _serve([str(digits_run), "--tls-cert", str(cert), "--tls-key", str(key)], {})
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=trusted, timeout=2)
                if r.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the TLS server did not come up"
            time.sleep(0.2)
        ok = httpx.get(f"https://127.0.0.1:{port}/v1/model", verify=trusted)
        assert ok.status_code == 200 and ok.json()["task"] == "classify"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=5)
        with pytest.raises(httpx.TransportError):  # nor to a client that does not trust it
            httpx.get(f"https://127.0.0.1:{port}/v1/model", timeout=5)
    finally:
        log = _stop(proc)
    assert f"https://127.0.0.1:{port}/" in log


def test_cli_refuses_bad_access_settings(digits_run, tmp_path, capsys):
    from imrec.cli import main

    assert main(["serve", str(digits_run), "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["serve", str(digits_run), "--token-file", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["serve", str(digits_run), "--cors-origin", "*"]) == 2
    assert "exact origin" in capsys.readouterr().err
    assert main(["serve", str(digits_run), "--burst", "0"]) == 2
    assert "--burst" in capsys.readouterr().err
