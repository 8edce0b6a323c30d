"""The HTTP service: every endpoint, each kind of bad input, batching, metrics, OpenAPI, shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import imrec
from imrec.deploy.runtime import load
from imrec.serve import Limits, app_from_env, create_app
from imrec.serve.batching import BatcherStopped, MicroBatcher
from imrec.serve.metrics import MULTIPROC_ENV, ServiceMetrics
from imrec.serve.schemas import ErrorResponse, ExplainResponse, PredictResponse
from imrec.serve.server import SETTINGS_ENV

# ---- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(digits_run) -> Path:
    """A real (tiny) digit classifier: sklearn's 8x8 digits, two epochs (conftest)."""
    return digits_run


@pytest.fixture(scope="module")
def digit_pngs() -> list[tuple[int, bytes]]:
    """(label, PNG bytes) of twelve digits from the training set, drawn at 32x32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = []
    for i in range(12):
        grey = (d.images[i] * 255 / 16).astype(np.uint8)  # (8, 8), light ink on dark
        out.append((int(d.target[i]), png_bytes(Image.fromarray(grey).resize((32, 32)))))
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@contextlib.asynccontextmanager
async def client_for(app, raise_app_exceptions: bool = True):
    """An httpx client talking to ``app`` in process, with its startup and shutdown run."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://imrec") as client:
            yield client


def with_client(app, fn, **kw):
    """Run ``await fn(client)`` against ``app``; returns what it returns."""

    async def main():
        async with client_for(app, **kw) as client:
            return await fn(client)

    return asyncio.run(main())


def expected_top(model, png: bytes, k: int = 5) -> list[dict]:
    """What the library itself answers for one image (the service must say the same)."""
    return model.predict(png, top_k=k)["top"]


# ---- predict ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_predict_multipart_json_and_data_urls_give_the_librarys_answer(
    run_dir, digit_pngs, backend
):
    app = create_app(run_dir, backend=backend)
    model = load(run_dir, backend=backend)
    (_, a), (_, b) = digit_pngs[0], digit_pngs[1]

    async def go(c):
        files = [("files", ("a.png", a, "image/png")), ("files", ("b.png", b, "image/png"))]
        multi = await c.post("/v1/predict", files=files, data={"top_k": "3"})
        js = await c.post(
            "/v1/predict", json={"images": [b64(a), "data:image/png;base64," + b64(b)]}
        )
        return multi, js

    multi, js = with_client(app, go)
    assert multi.status_code == 200 and js.status_code == 200
    for body in (multi.json(), js.json()):
        PredictResponse.model_validate(body)  # the documented schema is what comes back
        assert body["model"] == model.name and body["version"] == model.version
        assert body["task"] == "classify"
    m, j = multi.json()["results"], js.json()["results"]
    assert [r["input"] for r in m] == ["a.png", "b.png"]
    assert [r["input"] for r in j] == ["images[0]", "images[1]"]
    # The same answers (a batch of two may differ from one image in the last digit: torch).
    for got, png, k in ((m[0], a, 3), (m[1], b, 3), (j[0], a, 5), (j[1], b, 5)):
        want = expected_top(model, png, k)
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want]
        assert [t["probability"] for t in got["top"]] == pytest.approx(
            [t["probability"] for t in want], abs=2e-6
        )


def test_bundle_serves_like_its_run(run_dir, digit_pngs, tmp_path):
    from imrec.deploy.export import export_bundle

    bundle = export_bundle(run_dir, tmp_path / "bundle", parity_limit=64)
    _, png = digit_pngs[3]

    async def go(c):
        manifest = (await c.get("/v1/model")).json()
        predicted = (await c.post("/v1/predict", json={"images": [b64(png)]})).json()
        explained = (await c.post("/v1/explain", json={"image": b64(png)})).json()
        return manifest, predicted, explained

    manifest, from_bundle, explained = with_client(create_app(bundle), go)
    _, from_run, _ = with_client(create_app(run_dir), go)
    assert manifest == json.loads((bundle / "manifest.json").read_text())
    assert from_bundle["version"] == from_run["version"]  # the same weights
    top = from_bundle["results"][0]["top"][0]
    assert top["label"] == from_run["results"][0]["top"][0]["label"]
    # Grad-CAM runs on the bundle's PyTorch weights and explains the same prediction.
    assert explained["label"] == top["label"] and explained["method"] == "gradcam"


def test_a_detector_answers_with_boxes(tmp_path):
    from imrec.core.checkpoint import save_checkpoint
    from imrec.models.detectors import create_detector

    det = create_detector("tinydet", num_classes=3, in_channels=3, input_size=(64, 64),
                          mean=[0.5] * 3, std=[0.25] * 3, width=8, neck=16)  # fmt: skip
    meta = {"task": "detect", "model": {"name": "tinydet", "options": {"width": 8, "neck": 16}},
            "classes": ["a", "b", "c"], "imrec_version": imrec.__version__,
            "input": {"size": [64, 64], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3,
                      "resize": "letterbox", "fill": 114}}  # fmt: skip
    save_checkpoint(tmp_path / "best", det.state_dict(), meta)
    photo = png_bytes(Image.new("RGB", (80, 50), (200, 40, 40)))

    async def go(c):
        return await c.post("/v1/predict", files=[("files", ("p.png", photo, "image/png"))])

    r = with_client(create_app(tmp_path, backend="torch"), go)
    assert r.status_code == 200, r.text
    body = PredictResponse.model_validate(r.json())
    assert body.task == "detect"
    assert (body.results[0].width, body.results[0].height) == (80, 50)
    assert isinstance(body.results[0].boxes, list)


# ---- the other endpoints ----------------------------------------------------------------


def test_health_ready_model_and_the_web_page(run_dir):
    app = create_app(run_dir)

    async def go(c):
        return {p: await c.get(p) for p in ("/healthz", "/readyz", "/v1/model", "/",
                                            "/static/app.js", "/static/app.css")}  # fmt: skip

    r = with_client(app, go)
    assert r["/healthz"].json() == {"status": "ok"}
    assert r["/readyz"].status_code == 200 and r["/readyz"].json() == {"status": "ready"}
    assert r["/v1/model"].json()["labels"] == [str(i) for i in range(10)]
    html = r["/"].text
    assert r["/"].headers["content-type"].startswith("text/html")
    for element in ('id="pad"', 'id="clear"', 'id="file"', 'id="predictions"', 'id="top-label"',
                    'id="cam"', 'aria-live="polite"', "touch-action"):  # fmt: skip
        assert element in html + r["/static/app.css"].text, element
    for page in (html, r["/static/app.js"].text, r["/static/app.css"].text):
        assert "http://" not in page and "https://" not in page  # works offline: no CDN


def test_readyz_is_503_when_the_worker_is_not_running(run_dir):
    app = create_app(run_dir)

    async def go():  # no lifespan: the batching worker never started
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://imrec") as c:
            return await c.get("/readyz"), await c.post("/v1/predict", json={"images": [b64(png_bytes(Image.new("L", (8, 8))))]})  # fmt: skip

    ready, predict = asyncio.run(go())
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
    assert predict.status_code == 503


def test_explain_returns_the_prediction_and_a_png_overlay(run_dir, digit_pngs):
    app = create_app(run_dir)
    _, png = digit_pngs[5]

    async def go(c):
        js = await c.post("/v1/explain", json={"image": b64(png), "raw": True})
        form = await c.post("/v1/explain", files={"file": ("d.png", png, "image/png")},
                            data={"target": "3"})  # fmt: skip
        bad = await c.post("/v1/explain", json={"image": b64(png), "target": "no-such-label"})
        return js, form, bad

    js, form, bad = with_client(app, go)
    assert js.status_code == 200 and form.status_code == 200, (js.text, form.text)
    body = ExplainResponse.model_validate(js.json())
    want = load(run_dir).predict(png, top_k=1)["top"][0]
    assert (body.label, body.probability) == (
        want["label"],
        pytest.approx(want["probability"], abs=1e-4),
    )
    assert body.method == "gradcam" and body.size == [8, 8]
    heat = np.array(body.map)
    assert heat.shape == (8, 8) and 0 <= heat.min() and heat.max() <= 1
    overlay = Image.open(io.BytesIO(base64.b64decode(body.overlay.split(",", 1)[1])))
    assert overlay.format == "PNG" and min(overlay.size) >= 224
    assert form.json()["target"] == "3" and form.json()["map"] is None
    assert bad.status_code == 422 and "no-such-label" in bad.json()["error"]["message"]


# ---- bad input: always a 4xx that says why, never a 500 ---------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels of grey."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 16)  # only a few rows: decoding would stop here
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


LIMITS = Limits(max_upload_bytes=300_000, max_files=4, max_pixels=1_000_000)


def bad_requests(good: bytes) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request arguments, expected status, expected error code)."""
    big = png_bytes(Image.new("1", (1200, 1200)))  # 1.44 Mpx in a few kB: over max_pixels

    def one(data: bytes, name="x.png"):
        return {"files": [("files", (name, data, "image/png"))]}

    async def chunked():
        yield b'{"images": ["'
        for _ in range(40):
            yield b"A" * 10_000  # 400 kB with no Content-Length: counted while it streams

    return {
        "not an image": (one(b"this is not an image"), 415, "not_an_image"),
        "truncated image": (one(good[: len(good) // 2]), 400, "bad_image"),
        "empty file": (one(b""), 400, "empty_image"),
        "too many pixels": (one(big), 413, "image_too_large"),
        "decompression bomb": (one(bomb_png(100_000, 100_000)), 413, "image_too_large"),
        "declared huge upload": (
            {"content": b"x" * 400_000, "headers": {"content-type": "application/json"}},
            413,
            "upload_too_large",
        ),  # fmt: skip
        "streamed huge upload": (
            {"content": chunked(), "headers": {"content-type": "application/json"}},
            413,
            "upload_too_large",
        ),  # fmt: skip
        "too many files": (
            {"files": [("files", (f"{i}.png", good, "image/png")) for i in range(5)]},
            413,
            "too_many_files",
        ),  # fmt: skip
        "too many images": ({"json": {"images": [b64(good)] * 5}}, 413, "too_many_files"),
        "no files field": (
            {"files": [("other", ("a.png", good, "image/png"))]},
            422,
            "missing_field",
        ),  # fmt: skip
        "text in the files field": (
            {"files": [("other", ("a.png", good, "image/png"))], "data": {"files": "text"}},
            422,
            "not_a_file",
        ),
        "bad top_k field": ({**one(good), "data": {"top_k": "lots"}}, 422, "invalid_field"),
        "multipart without boundary": (
            {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
            400,
            "bad_multipart",
        ),  # fmt: skip
        "malformed json": (
            {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
            422,
            "invalid_json",
        ),  # fmt: skip
        "json not an object": ({"json": ["a"]}, 422, "invalid_json"),
        "missing field": ({"json": {"pictures": [b64(good)]}}, 422, "invalid_json"),
        "empty list": ({"json": {"images": []}}, 422, "invalid_json"),
        "top_k out of range": ({"json": {"images": [b64(good)], "top_k": 0}}, 422, "invalid_json"),
        "bad base64": ({"json": {"images": ["not base64 !"]}}, 400, "bad_base64"),
        "bad data url": ({"json": {"images": ["data:image/png," + b64(good)]}}, 400, "bad_base64"),
        "base64 of text": ({"json": {"images": [b64(b"hello there")]}}, 415, "not_an_image"),
        "plain text body": (
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),  # fmt: skip
    }


def test_every_bad_input_is_a_4xx_with_a_reason_and_the_service_lives_on(run_dir, digit_pngs):
    app = create_app(run_dir, limits=LIMITS)
    good = digit_pngs[0][1]
    cases = bad_requests(good)

    async def go(c):
        answers = {name: await c.post("/v1/predict", **kw) for name, (kw, _, _) in cases.items()}
        after = await c.post("/v1/predict", json={"images": [b64(good)]})
        return answers, after, await c.get("/metrics")

    answers, after, metrics = with_client(app, go)
    for name, (_, status, code) in cases.items():
        r = answers[name]
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (name, r.text)
        ErrorResponse.model_validate(r.json())
        assert len(r.json()["error"]["message"]) > 10, name
    assert after.status_code == 200
    # The catch-all never ran.
    assert app.state.metrics.value("imrec_errors_total", kind="internal") == 0
    assert 'status="500"' not in metrics.text
    assert 'imrec_errors_total{kind="not_an_image"} 2' in metrics.text


def test_error_messages_name_the_file_and_the_limit(run_dir, digit_pngs):
    app = create_app(run_dir, limits=LIMITS)
    cases = bad_requests(digit_pngs[0][1])

    async def go(c):
        return {n: (await c.post("/v1/predict", **cases[n][0])).json()["error"]["message"]
                for n in ("not an image", "too many pixels", "decompression bomb", "too many files", "bad base64")}  # fmt: skip

    msg = with_client(app, go)
    assert "x.png" in msg["not an image"]
    assert "1200x1200" in msg["too many pixels"] and "1000000" in msg["too many pixels"]
    assert "--max-pixels" in msg["decompression bomb"]
    assert "4" in msg["too many files"] and "--max-files" in msg["too many files"]
    assert "images[0]" in msg["bad base64"]


def test_a_real_bug_is_a_logged_json_500(run_dir, digit_pngs, caplog):
    app = create_app(run_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    app.state.model.outputs = broken

    async def go(c):
        return await c.post("/v1/predict", json={"images": [b64(digit_pngs[0][1])]})

    r = with_client(app, go, raise_app_exceptions=False)
    assert r.status_code == 500
    assert (
        r.json()["error"]["code"] == "internal" and "RuntimeError" in r.json()["error"]["message"]
    )
    assert app.state.metrics.value("imrec_errors_total", kind="internal") == 1
    assert "simulated bug" in caplog.text


def test_unknown_paths_and_methods_are_json_errors(run_dir):
    async def go(c):
        return await c.get("/nope"), await c.get("/v1/predict")

    missing, wrong = with_client(create_app(run_dir), go)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")


# ---- batching ---------------------------------------------------------------------------


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(run_dir, digit_pngs):
    app = create_app(run_dir, max_batch=32, max_wait_ms=50)
    model = app.state.model
    want = [expected_top(model, png) for _, png in digit_pngs]
    assert len({w[0]["label"] for w in want}) >= 3  # the images really differ for the model
    calls, real_outputs = [], model.outputs

    def counted(images):
        calls.append(len(images))
        return real_outputs(images)

    model.outputs = counted

    async def go(c):
        posts = [c.post("/v1/predict", json={"images": [b64(png)]}) for _, png in digit_pngs]
        return await asyncio.gather(*posts)

    answers = with_client(app, go)
    assert [a.json()["results"][0]["top"] for a in answers] == want
    assert sum(calls) == len(digit_pngs) and len(calls) < len(digit_pngs)
    assert max(calls) > 1
    assert app.state.metrics.value("imrec_batch_size_count") == len(calls)


def test_batcher_respects_max_batch_and_drains_on_stop():
    sizes = []

    def double(items):
        sizes.append(len(items))
        time.sleep(0.01)
        return [x * 2 for x in items]

    async def main():
        b = MicroBatcher(double, max_batch=4, max_wait_ms=1000)
        await b.start()
        pending = [asyncio.ensure_future(b.submit([i])) for i in range(10)]
        await asyncio.sleep(0.05)
        await b.stop()  # does not wait out the 1 s: stopping flushes what is queued
        with pytest.raises(BatcherStopped):
            await b.submit([1])
        return await asyncio.wait_for(asyncio.gather(*pending), 0.1)  # answered, not dropped

    start = time.monotonic()
    results = asyncio.run(main())
    assert results == [[2 * i] for i in range(10)]
    assert max(sizes) <= 4 and sum(sizes) == 10
    assert time.monotonic() - start < 0.9


def test_batcher_hands_a_failure_to_every_request_of_the_batch():
    def fail(items):
        raise RuntimeError("boom")

    async def main():
        b = MicroBatcher(fail, max_batch=8, max_wait_ms=20)
        await b.start()
        out = await asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True)
        ok = b.running
        await b.stop()
        return out, ok

    out, still_running = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) for e in out)
    assert still_running  # one failed batch does not end the worker


# ---- metrics ----------------------------------------------------------------------------


def test_metrics_are_prometheus_text_with_counts_latency_and_batches(run_dir, digit_pngs):
    app = create_app(run_dir)

    async def go(c):
        for _, png in digit_pngs[:3]:
            await c.post("/v1/predict", files={"files": ("d.png", png, "image/png")})
        await c.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
        return await c.get("/metrics")

    r = with_client(app, go)
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = r.text
    got = samples(text)
    assert got['imrec_requests_total{endpoint="/v1/predict",method="POST",status="200"}'] == 3
    assert got['imrec_requests_total{endpoint="/v1/predict",method="POST",status="415"}'] == 1
    assert got['imrec_errors_total{kind="unsupported_media_type"}'] == 1
    assert got['imrec_request_duration_seconds_bucket{endpoint="/v1/predict",le="+Inf"}'] == 4
    assert got['imrec_request_duration_seconds_count{endpoint="/v1/predict"}'] == 4
    assert got["imrec_images_predicted_total"] == 3
    assert got['imrec_batch_size_bucket{le="1.0"}'] == 3
    assert "# TYPE imrec_request_duration_seconds histogram" in text
    # prometheus_client writes labels in alphabetical order.
    assert 'imrec_model_info{backend="onnxruntime",name="cnn",task="classify",version="' in text


def samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of an exposition text (fails unless every value is a number)."""
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    return {series: float(value) for series, value in lines}


def test_histogram_buckets_are_cumulative_and_labels_escaped_and_checked():
    m = ServiceMetrics()
    for n in (1, 2, 3, 300):
        m.batch_size.observe(n)
    text = m.render()
    for le, n in (("1.0", 1), ("2.0", 2), ("4.0", 3), ("256.0", 3), ("+Inf", 4)):
        assert f'imrec_batch_size_bucket{{le="{le}"}} {n}.0\n' in text
    assert "imrec_batch_size_sum 306.0\n" in text and "imrec_batch_size_count 4.0\n" in text
    m.errors.labels(kind='say "hi"\n').inc()
    assert 'imrec_errors_total{kind="say \\"hi\\"\\n"} 1.0\n' in m.render()
    with pytest.raises(ValueError):
        m.errors.labels(other="x")


def test_two_apps_in_one_process_keep_separate_numbers(run_dir, digit_pngs):
    first, second = create_app(run_dir), create_app(run_dir)  # no clash of registries

    async def predict_three(c):
        for _, png in digit_pngs[:3]:
            await c.post("/v1/predict", files={"files": ("d.png", png, "image/png")})

    async def scrape(c):
        return (await c.get("/metrics")).text

    with_client(first, predict_three)
    text = with_client(second, scrape)
    assert 'imrec_requests_total{endpoint="/v1/predict"' not in text
    assert "imrec_images_predicted_total 0.0" in text
    assert first.state.metrics.value("imrec_images_predicted_total") == 3
    text = with_client(first, scrape)
    assert 'imrec_requests_total{endpoint="/v1/predict",method="POST",status="200"} 3.0' in text


# ---- OpenAPI ----------------------------------------------------------------------------


def test_openapi_lists_the_real_paths_bodies_and_errors(run_dir):
    async def go(c):
        return (await c.get("/openapi.json")).json()

    spec = with_client(create_app(run_dir), go)
    paths = spec["paths"]
    assert {p: sorted(paths[p]) for p in paths} == {
        "/v1/predict": ["post"], "/v1/explain": ["post"], "/v1/model": ["get"],
        "/healthz": ["get"], "/readyz": ["get"], "/metrics": ["get"],
    }  # fmt: skip
    for path, file_field in (("/v1/predict", "files"), ("/v1/explain", "file")):
        op = paths[path]["post"]
        content = op["requestBody"]["content"]
        assert sorted(content) == ["application/json", "multipart/form-data"]
        assert file_field in content["multipart/form-data"]["schema"]["properties"]
        assert {"400", "413", "415", "422"} <= set(op["responses"])
        assert op["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")  # fmt: skip
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    predict = paths["/v1/predict"]["post"]
    assert "images" in predict["requestBody"]["content"]["application/json"]["schema"]["properties"]
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("PredictResponse")


# ---- running it: settings for workers, the CLI, graceful shutdown -------------------------


def test_workers_build_the_app_from_the_environment(run_dir, monkeypatch):
    settings = {"source": str(run_dir), "backend": "torch", "max_batch": 7, "max_wait_ms": 2,
                "limits": {"max_upload_bytes": 1000, "max_files": 2, "max_pixels": 500}}  # fmt: skip
    monkeypatch.setenv(SETTINGS_ENV, json.dumps(settings))
    app = app_from_env()
    assert app.state.model.backend == "torch"
    assert app.state.batcher.max_batch == 7
    assert app.state.limits == Limits(max_upload_bytes=1000, max_files=2, max_pixels=500)


def test_workers_listen_on_a_socket_that_gets_tcp_nodelay(monkeypatch):
    import uvicorn
    import uvicorn.supervisors

    from imrec.serve.server import _run_workers

    seen = {}

    class Supervisor:  # stands in for uvicorn's, which would start the worker processes
        def __init__(self, config, sockets):
            seen["config"], seen["sockets"] = config, sockets

        def run(self):
            seen["ran"] = True
            seen["metrics_dir"] = folder = os.environ.get(MULTIPROC_ENV)
            seen["private"] = folder is not None and (os.stat(folder).st_mode & 0o777) == 0o700

    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", Supervisor)
    config = uvicorn.Config("imrec.serve.server:app_from_env", factory=True, port=0, workers=2)
    _run_workers(config)
    (sock,) = seen["sockets"]
    try:
        # asyncio sets TCP_NODELAY on accepted connections only when the listener says TCP.
        assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable() and seen["ran"]
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    # The workers' metrics folder: private while they ran, gone after, the variable unset again.
    assert seen["private"] and not os.path.exists(seen["metrics_dir"])
    assert MULTIPROC_ENV not in os.environ


def test_workers_that_end_are_marked_dead_for_the_live_gauges(tmp_path, monkeypatch):
    from imrec.serve.server import _marking_dead_workers

    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    files = ["gauge_livesum_11.db", "gauge_livemax_11.db", "counter_11.db", "gauge_livesum_12.db"]
    for name in files:
        (tmp_path / name).touch()

    class Worker:
        def __init__(self, pid):
            self.pid = pid

    class Base:  # uvicorn's supervisor: its processes, and the round that replaces dead ones
        def __init__(self, config, sockets):
            self.processes, self.died = [Worker(11), Worker(12)], set()

        def keep_subprocess_alive(self):
            self.processes = [Worker(p.pid + 2) if p.pid in self.died else p
                              for p in self.processes]  # fmt: skip

    supervisor = _marking_dead_workers(Base)(None, sockets=[])
    supervisor.keep_subprocess_alive()
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(files)
    supervisor.died = {11}  # worker 11 died and is replaced by 13
    supervisor.keep_subprocess_alive()
    # Its live-only gauges go; what it counted stays in the totals.
    assert sorted(f.name for f in tmp_path.iterdir()) == ["counter_11.db", "gauge_livesum_12.db"]


def test_limits_are_checked():
    with pytest.raises(ValueError, match=r"^max_files \(--max-files\) must be 1 or more, got 0$"):
        Limits(max_files=0)
    with pytest.raises(ValueError, match=r"max_pixels \(--max-pixels\) must be in \[1, 40000000\]"):
        Limits(max_pixels=10**12)  # at most imrec.core.preprocess.MAX_PIXELS


def test_cli_serve_passes_its_flags_on(run_dir, monkeypatch):
    import imrec.serve
    from imrec.cli import main

    seen = {}
    monkeypatch.setattr(imrec.serve, "serve", lambda source, **kw: seen.update(source=source, **kw))
    assert main(["serve", str(run_dir), "--port", "9123", "--workers", "2", "--backend", "torch",
                 "--max-batch", "16", "--max-wait-ms", "2", "--max-upload-mb", "1",
                 "--max-files", "3", "--max-pixels", "1000", "--host", "0.0.0.0",
                 "--token-file", "t.txt", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                 "--rate-limit", "5", "--burst", "7", "--token-rate-limit", "2",
                 "--trust-proxy", "--cors-origin", "https://a.example",
                 "--cors-origin", "http://b.example:8080"]) == 0  # fmt: skip
    assert seen["source"] == str(run_dir) and seen["port"] == 9123 and seen["workers"] == 2
    assert (seen["backend"], seen["max_batch"], seen["max_wait_ms"]) == ("torch", 16, 2)
    assert seen["limits"] == Limits(max_upload_bytes=2**20, max_files=3, max_pixels=1000)
    assert (seen["host"], seen["token_file"], seen["no_auth"]) == ("0.0.0.0", "t.txt", False)
    assert (seen["tls_cert"], seen["tls_key"]) == ("c.pem", "k.pem")
    assert seen["access"] == imrec.serve.Access(
        rate=5, burst=7, token_rate=2, trust_proxy=True,
        cors_origins=("https://a.example", "http://b.example:8080"),
    )  # fmt: skip
    main(["serve", str(run_dir), "--no-auth"])
    assert seen["no_auth"] is True and seen["access"] == imrec.serve.Access()


def test_cli_serve_refuses_a_missing_model(tmp_path, capsys):
    from imrec.cli import main

    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "no such" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {seconds} s")


def wait_in_flight(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", timeout=5).text
        if 'imrec_requests_in_flight{endpoint="/v1/predict"} 1' in text:
            return
        time.sleep(0.05)
    raise AssertionError("the request never reached the server")


def test_sigterm_lets_requests_in_flight_finish(run_dir, digit_pngs):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long batching wait keeps the request in flight while the signal arrives.
    cmd = [sys.executable, "-m", "imrec", "serve", str(run_dir), "--port", str(port),
           "--backend", "torch", "--max-wait-ms", "2000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))  # fmt: skip
    try:
        wait_ready(url, proc)
        answer = {}

        def post():
            body = {"images": [b64(digit_pngs[0][1])]}
            answer["r"] = httpx.post(url + "/v1/predict", json=body, timeout=30)

        t = threading.Thread(target=post)
        t.start()
        wait_in_flight(url)  # the request is now waiting in the batch queue
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        # uvicorn finishes its graceful shutdown, then dies of the signal it caught.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answer["r"].status_code == 200
    assert answer["r"].json()["results"][0]["top"]
    log = proc.stdout.read()
    assert "Waiting for application shutdown" in log and "Finished server process" in log, log


def predictions_by_worker(folder: Path) -> dict[str, float]:
    """The /v1/predict 200s each worker counted, read from its own file in the metrics folder."""
    from prometheus_client.multiprocess import MultiProcessCollector

    series = {"endpoint": "/v1/predict", "method": "POST", "status": "200"}
    out = {}
    for path in folder.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            for s in metric.samples:
                if s.name == "imrec_requests_total" and s.labels == series:
                    out[path.stem.removeprefix("counter_")] = s.value
    return out


def test_metrics_of_several_workers_are_the_services_totals(run_dir, digit_pngs, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "imrec", "serve", str(run_dir), "--port", str(port),
           "--backend", "torch", "--workers", "2", "--rate-limit", "0"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))  # the metrics folder's place
    env.pop(MULTIPROC_ENV, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    try:
        wait_ready(url, proc)
        (folder,) = tmp_path.glob("imrec-metrics-*")
        deadline = time.monotonic() + 60  # both workers have built their app (and set the info)
        while len(list(folder.glob("gauge_livemax_*.db"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # A new connection for each request, so that either worker may take it; on until each
        # has answered some.
        png = digit_pngs[0][1]
        sent = 0
        while sent < 8 or (len(predictions_by_worker(folder)) < 2 and sent < 300):
            r = httpx.post(url + "/v1/predict", files={"files": ("d.png", png, "image/png")})
            assert r.status_code == 200
            sent += 1
        deadline = time.monotonic() + 20  # a worker counts a request just after answering it
        while sum(predictions_by_worker(folder).values()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        by_worker = predictions_by_worker(folder)
        assert len(by_worker) == 2 and all(0 < n < sent for n in by_worker.values()), by_worker
        assert sum(by_worker.values()) == sent

        predict = 'imrec_requests_total{endpoint="/v1/predict",method="POST",status="200"}'
        for _ in range(6):  # each scrape on a new connection, answered by either worker
            got = samples(httpx.get(url + "/metrics").text)
            assert got[predict] == sent
            assert got["imrec_images_predicted_total"] == sent
            assert got['imrec_request_duration_seconds_count{endpoint="/v1/predict"}'] == sent
            # One series for the model (live workers' max), as with one process.
            (info,) = [k for k in got if k.startswith("imrec_model_info")]
            assert got[info] == 1 and "pid=" not in info

        # A worker killed outright: uvicorn replaces it and it is marked dead, so its live-only
        # gauges go, while the requests it answered stay in the totals.
        victim = min(by_worker)
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while list(folder.glob(f"gauge_live*_{victim}.db")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(folder.glob(f"gauge_live*_{victim}.db"))
        assert (folder / f"counter_{victim}.db").exists()
        got = samples(httpx.get(url + "/metrics").text)
        assert got[predict] == sent
        assert [got[k] for k in got if k.startswith("imrec_model_info")] == [1]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not folder.exists(), proc.stdout.read()  # removed when the service stopped
