"""The HTTP service: FastAPI routes over one model, with batching, limits and metrics.

Routes: ``POST /v1/predict`` and ``POST /v1/explain`` (multipart or JSON), ``GET /v1/model``
(the manifest), ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` and ``GET /`` (the web page).
Every client error is a 4xx with ``{"error": {"code", "message"}}``; a 500 means a bug in imrec
and is logged with its traceback.

Example (``bundle`` is an exported digit classifier):
    >>> app = create_app(bundle, backend="torch")
    >>> sorted(app.openapi()["paths"])
    ['/healthz', '/metrics', '/readyz', '/v1/explain', '/v1/model', '/v1/predict']
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imrec.core.errors import UnusableImage

from .batching import BatcherStopped, MicroBatcher
from .inputs import (
    ApiError,
    BodyLimit,
    Limits,
    bool_field,
    open_image,
    read_images,
    reject_fields,
    top_k_field,
)
from .metrics import CONTENT_TYPE, ServiceMetrics
from .schemas import (
    FILE,
    MAX_TOP_K,
    ExplainJSON,
    ExplainResponse,
    PredictJSON,
    PredictResponse,
    Status,
    error_responses,
    request_bodies,
)
from .security import Access, Gate, redact_access_log

log = logging.getLogger("imrec.serve")
LIMIT_CODES = frozenset({"upload_too_large", "too_many_files", "image_too_large"})
STATIC = Path(__file__).parent / "static"

router = APIRouter()


def create_app(
    source: str | Path,
    *,
    backend: str = "onnxruntime",
    max_batch: int = 32,
    max_wait_ms: float = 5,
    limits: Limits | None = None,
    access: Access | None = None,
) -> FastAPI:
    """The service for one model (loaded now, so a bad source fails before serving).

    Args:
        source: an export bundle folder, a run folder or a checkpoint.
        backend: ``"onnxruntime"`` or ``"torch"`` (see :func:`imrec.deploy.runtime.load`).
        max_batch: the most images in one model call.
        max_wait_ms: how long an image waits for others to share its model call.
        limits: upload size, images per request, pixels per image (default :class:`Limits`).
        access: tokens, rate limits, CORS origins (:class:`~imrec.serve.security.Access`);
            ``None``: open and unlimited, as for a test client (``imrec serve`` always passes
            one). Security headers are sent either way.

    Example:
        >>> app = create_app(bundle, max_batch=8, limits=Limits(max_files=4))
        >>> app.state.model, app.state.limits.max_files
        (Model('cnn', task='classify', backend='onnxruntime', version='...'), 4)

    Usage (what ``imrec serve`` does, with ``uvicorn`` serving until interrupted)::

        import uvicorn

        uvicorn.run(create_app("runs/mnist-1/bundle"), port=8000)
    """
    from imrec.deploy.runtime import load

    limits = limits or Limits()
    model = load(source, backend=backend)
    metrics = _service_metrics(model)
    batcher = MicroBatcher(
        lambda items: _run_batch(model, items),
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        on_batch=metrics.batch_size.observe,
    )
    app = FastAPI(
        title="imrec",
        summary=f"{model.name} ({model.task}, {len(model.classes)} labels)",
        version=model.version,
        lifespan=_lifespan(batcher),
    )
    app.state.model, app.state.batcher = model, batcher
    app.state.metrics, app.state.limits = metrics, limits
    app.state.access = access = access or Access(rate=0)
    _add_error_handlers(app, metrics)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Outermost last: metrics see every status; CORS answers preflights (which carry no
    # token) before the gate; the gate refuses before any body is read.
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    app.add_middleware(Gate, access=access, on_reject=metrics.reject)
    if access.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(access.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(RequestMetrics, metrics=metrics)
    redact_access_log()
    return app


def _service_metrics(model) -> ServiceMetrics:
    """Fresh metrics whose info series names the model being served."""
    metrics = ServiceMetrics()
    metrics.info.labels(name=model.name, version=model.version, task=model.task,
                        backend=model.backend).set(1)  # fmt: skip
    return metrics


def _lifespan(batcher: MicroBatcher):
    """The app's lifespan: the batching worker runs while the service does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # torch, the model and the libraries leave ~400k objects that live as long as the
        # process; a full garbage collection walks them all (~150 ms on 2 cores) and stalls
        # every request in flight. Frozen, the collector skips them.
        gc.collect()
        gc.freeze()
        await batcher.start()
        yield
        await batcher.stop()  # requests already queued still get their answers

    return lifespan


def _run_batch(model, items: list) -> list[dict]:
    """One model call for a micro-batch of the model's own service items."""
    return model.predict_items(items)


# ---- routes ---------------------------------------------------------------------------------

_PREDICT_BODIES = request_bodies(
    PredictJSON,
    files={"files": {"type": "array", "items": FILE, "description": "One or more images."}},
    form={
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5},
        "accept_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "reject": {"type": "boolean", "default": True},
    },
)
_EXPLAIN_BODIES = request_bodies(
    ExplainJSON,
    files={"file": FILE},
    form={"target": {"type": "string"}, "raw": {"type": "boolean", "default": False}},
)


@router.post(
    "/v1/predict",
    response_model=PredictResponse,
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra=_PREDICT_BODIES,
    summary="Top-k labels (classifier) or boxes (detector) for one or more images",
)
async def predict(request: Request) -> JSONResponse:
    state = request.app.state
    images, fields = await read_images(request, state.limits, PredictJSON)
    if isinstance(fields, PredictJSON):
        top_k = fields.top_k
        options = fields.model_dump(include={"accept_rate", "reject"}, exclude_defaults=True)
    else:
        top_k = top_k_field(fields.get("top_k"))
        options = reject_fields(fields.get("accept_rate"), fields.get("reject"))
    if options and state.model.task != "classify":
        raise ApiError(422, "invalid_field", "accept_rate and reject are for classifiers; "
                       "detectors keep their score threshold")  # fmt: skip
    items = await asyncio.to_thread(_prepare_all, state.model, images, top_k, state.limits, options)
    try:
        results = await state.batcher.submit(items)
    except BatcherStopped as e:
        raise ApiError(503, "not_ready", str(e)) from e
    for (name, _), result in zip(images, results, strict=True):
        result["input"] = name
    state.metrics.images.inc(len(results))
    model = state.model
    return JSONResponse({"model": model.name, "version": model.version, "task": model.task,
                         "results": results})  # fmt: skip


def _prepare_all(
    model, images: list[tuple[str, bytes]], top_k: int, limits: Limits, options: dict
) -> list:
    """Decode and check every image of a request (in a thread: big photos take a while)."""
    items = []
    for name, data in images:
        image = open_image(data, name, limits.max_pixels)
        try:
            items.append(model.service_item(image, data, top_k, **options))
        except UnusableImage as e:
            raise ApiError(422, "unusable_image", f"{name}: {e}") from e
    return items


@router.post(
    "/v1/explain",
    response_model=ExplainResponse,
    responses=error_responses(400, 413, 415, 422, 503),
    openapi_extra=_EXPLAIN_BODIES,
    summary="Grad-CAM of one image (classifiers): the prediction and a PNG overlay",
)
async def explain(request: Request) -> JSONResponse:
    state = request.app.state
    model = state.model
    if not model.explainable:
        raise ApiError(400, "not_a_classifier", "explanations are for classifiers; this "
                       f"model is a {model.task} model")  # fmt: skip
    images, fields = await read_images(request, state.limits, ExplainJSON)
    if len(images) != 1:
        raise ApiError(422, "one_image", f"explain takes one image, got {len(images)}")
    target, raw = _explain_fields(fields)
    name, data = images[0]
    image = await asyncio.to_thread(open_image, data, name, state.limits.max_pixels)
    try:
        result = await state.batcher.call(model.explain, image, target)
    except BatcherStopped as e:
        raise ApiError(503, "not_ready", str(e)) from e
    except ValueError as e:  # an unknown target label, an image without usable ink
        raise ApiError(422, "cannot_explain", f"{name}: {e}") from e
    return JSONResponse(_explain_body(model, result, raw))


def _explain_fields(fields) -> tuple[str | None, bool]:
    if isinstance(fields, ExplainJSON):
        return fields.target, fields.raw
    return fields.get("target") or None, bool_field("raw", fields.get("raw", "false"))


def _explain_body(model, result: dict, raw: bool) -> dict[str, Any]:
    from PIL import Image

    from imrec.explain import overlay

    method = "gradcam" if result.get("gradcam") is not None else "saliency"
    heat = result[method]  # (H, W) in [0, 1]
    buf = io.BytesIO()
    Image.fromarray(overlay(result["input"], heat)).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "model": model.name, "version": model.version,
        "label": result["label"], "probability": result["probability"],
        "target": result.get("target", result["label"]),
        "target_probability": result.get("target_probability", result["probability"]),
        "method": method, "overlay": f"data:image/png;base64,{png}",
        "size": list(heat.shape), "map": heat.round(4).tolist() if raw else None,
    }  # fmt: skip


@router.get("/v1/model", response_model=dict[str, Any], summary="The model's manifest")
async def model_manifest(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.model.manifest)


@router.get("/healthz", response_model=Status, summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Status,
    responses=error_responses(503),
    summary="The model is loaded and its batching worker runs",
)
async def readyz(request: Request) -> dict:
    if not request.app.state.batcher.running:
        raise ApiError(503, "not_ready", "the model worker is not running")
    return {"status": "ready"}


@router.get(
    "/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)"
)
async def metrics_text(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def web_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


# ---- errors and metrics ---------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def reply(status: int, code: str, message: str) -> JSONResponse:
        if code in LIMIT_CODES:
            metrics.reject(code)
        else:
            metrics.errors.labels(kind=code).inc()
        return _error(status, code, message)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return reply(e.status, e.code, e.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return reply(e.status_code, code, f"{request.method} {request.url.path}: {e.detail}")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        return reply(422, "invalid_request", str(e.errors()[:3]))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, e: ClientDisconnect):
        return reply(400, "client_disconnected", "the client went away before sending the body")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return reply(500, "internal", f"internal error ({type(e).__name__}); see the server log")


class RequestMetrics:
    """ASGI middleware: counts each request by endpoint, method and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics
        self.endpoints = {"/", "/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz",
                          "/metrics"}  # fmt: skip

    def _endpoint(self, path: str) -> str:
        # Known routes only, so that scanners probing random paths add no new series.
        if path in self.endpoints:
            return path
        return "/static" if path.startswith("/static/") else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # an exception that escapes is a 500
        endpoint = self._endpoint(scope["path"])
        in_flight = self.metrics.in_flight.labels(endpoint=endpoint)
        in_flight.inc()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            in_flight.dec()
            self.metrics.requests.labels(
                endpoint=endpoint, method=scope["method"], status=status
            ).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
