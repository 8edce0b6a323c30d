"""Reading what clients send, within limits: every way it can go wrong is a 4xx that says why.

* :class:`Limits` holds the settable limits (upload bytes, files per request, pixels per image).
* :class:`BodyLimit` stops reading a request body at the upload limit, whether or not the client
  declared its length, so a 2 GB body never reaches memory.
* :func:`read_images` turns a multipart form or a JSON body into named encoded images.
* :func:`open_image` decodes one of them, telling apart "not an image" (415), "too many pixels"
  (413) and "corrupt or truncated" (400).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imrec.core.checks import AT_LEAST_1, Range, check_number
from imrec.core.preprocess import MAX_PIXELS, ImageReadError, load_image

from .schemas import MAX_TOP_K, PredictJSON

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.ASCII)


class ApiError(Exception):
    """A client error: HTTP ``status`` with a JSON body ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Limits:
    """What one request may hold.

    Args:
        max_upload_bytes: the largest request body.
        max_files: the most images in one request.
        max_pixels: the most pixels (width x height) of one image, checked before decoding
            (decompression-bomb guard); at most ``imrec.core.preprocess.MAX_PIXELS``.

    Example:
        >>> Limits(max_upload_bytes=5 * 2**20, max_files=8).max_pixels == MAX_PIXELS
        True
    """

    max_upload_bytes: int = 20 * 2**20
    max_files: int = 64
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        # A body limit under a byte comes from --max-upload-mb under 1 / 2**20 (0 or less).
        check_number(self.max_upload_bytes, "max_upload_bytes (--max-upload-mb)", AT_LEAST_1,
                     whole=True)  # fmt: skip
        check_number(self.max_files, "max_files (--max-files)", AT_LEAST_1, whole=True)
        check_number(self.max_pixels, "max_pixels (--max-pixels)", Range(1, MAX_PIXELS), whole=True)


class BodyLimit:
    """ASGI middleware: a request body longer than ``max_bytes`` ends in a 413 while it streams.

    A declared ``Content-Length`` over the limit is refused before the first byte is read;
    otherwise the bytes are counted as they arrive (chunked uploads declare nothing).
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large(f"declares {int(declared)} bytes")
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large(f"sent more than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self, what: str) -> ApiError:
        return ApiError(
            413, "upload_too_large",
            f"request body {what}; the limit is {self.max_bytes} bytes "
            f"({self.max_bytes / 2**20:.1f} MB, imrec serve --max-upload-mb)",
        )  # fmt: skip


# ---- request bodies -------------------------------------------------------------------------


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request, limits: Limits):
    """The parsed multipart form, with starlette's parse errors turned into ours."""
    try:
        # The parser stops at the file limit; a few small text fields (top_k, target) ride along.
        return await request.form(max_files=limits.max_files, max_fields=8, max_part_size=64 * 1024)
    except HTTPException as e:
        if "Too many files" in str(e.detail):
            raise ApiError(413, "too_many_files", f"{e.detail} (imrec serve --max-files)") from e
        raise ApiError(400, "bad_multipart", f"cannot parse the multipart form: {e.detail}") from e


async def read_json(request: Request, model: type[BaseModel]) -> BaseModel:
    """The JSON body validated by ``model``; 422 naming the first bad field otherwise."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(
            422, "invalid_json", f"{where}: {first['msg']} ({len(e.errors())} error(s) in all)"
        ) from e


def unsupported_body(request: Request) -> ApiError:
    """415 for a body that is neither multipart nor JSON."""
    got = _content_type(request) or "no Content-Type"
    return ApiError(
        415, "unsupported_media_type",
        f"send multipart/form-data (field 'files') or application/json, not {got}",
    )  # fmt: skip


def decode_base64(text: str, name: str) -> bytes:
    """The bytes of a base64 string or a ``data:...;base64,`` URL; 400 when it is not base64."""
    if text.startswith("data:"):
        match = _DATA_URL.match(text)
        if match is None:
            raise ApiError(400, "bad_base64", f"{name}: a data URL must be 'data:TYPE;base64,...'")
        text = text[match.end() :]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, "bad_base64", f"{name}: not valid base64 ({e})") from e
    if not data:
        raise ApiError(400, "empty_image", f"{name}: the image is empty (0 bytes)")
    return data


async def read_images(
    request: Request, limits: Limits, json_model: type[BaseModel]
) -> tuple[list, BaseModel | dict]:
    """``[(name, encoded bytes)]`` and the other fields, from a multipart form or a JSON body.

    Multipart: files in the field ``files`` (``file`` for one), other fields as strings.
    JSON: ``json_model`` with ``images`` (a list) or ``image`` (one), base64 or data URLs.
    """
    kind = _content_type(request)
    if kind == "multipart/form-data":
        return await _images_from_form(request, limits)
    if kind == "application/json":
        body = await read_json(request, json_model)
        named = _json_images(body)
        if len(named) > limits.max_files:
            raise ApiError(413, "too_many_files", f"{len(named)} images; the limit is "
                           f"{limits.max_files} per request (imrec serve --max-files)")  # fmt: skip
        return [(name, decode_base64(text, name)) for name, text in named], body
    raise unsupported_body(request)


def _json_images(body: BaseModel) -> list[tuple[str, str]]:
    if isinstance(body, PredictJSON):
        return [(f"images[{i}]", text) for i, text in enumerate(body.images)]
    return [("image", body.image)]  # ExplainJSON: one image


async def _images_from_form(request: Request, limits: Limits) -> tuple[list, dict]:
    form = await read_form(request, limits)
    try:
        uploads = form.getlist("files") + form.getlist("file")
        if not uploads:
            raise ApiError(
                422, "missing_field", "no image: send the files in the form field 'files'"
            )
        images = [await _upload_bytes(up, i) for i, up in enumerate(uploads)]
        return images, {k: v for k, v in form.items() if isinstance(v, str)}
    finally:
        await form.close()  # uploads over 1 MB were spooled to temporary files


async def _upload_bytes(upload, i: int) -> tuple[str, bytes]:
    if isinstance(upload, str):
        raise ApiError(422, "not_a_file", f"form field 'files' #{i} is text, not a file")
    name = upload.filename or f"files[{i}]"
    data = await upload.read()
    if not data:
        raise ApiError(400, "empty_image", f"{name}: the file is empty (0 bytes)")
    return name, data


def reject_fields(accept_rate: str | None, reject: str | None) -> dict:
    """The multipart ``accept_rate`` and ``reject`` fields as predict options."""
    out: dict = {}
    if accept_rate is not None:
        try:
            rate = float(accept_rate)
        except ValueError:
            rate = -1.0
        if not 0 < rate <= 1:
            raise ApiError(
                422, "invalid_field", f"accept_rate must be a number in (0, 1], got {accept_rate!r}"
            )
        out["accept_rate"] = rate
    if reject is not None:
        out["reject"] = bool_field("reject", reject)
    return out


def bool_field(name: str, value: str) -> bool:
    """A multipart boolean field: ``true``/``false``/``1``/``0`` (any case)."""
    flag = value.strip().lower()
    if flag not in ("true", "false", "1", "0"):
        raise ApiError(422, "invalid_field", f"{name} must be true or false, got {value!r}")
    return flag in ("true", "1")


def top_k_field(value: str | None, default: int = 5) -> int:
    """The multipart ``top_k`` field as an int in 1..MAX_TOP_K."""
    if value is None:
        return default
    if not value.strip().isdigit() or not 1 <= int(value) <= MAX_TOP_K:
        raise ApiError(
            422, "invalid_field", f"top_k must be an integer in 1..{MAX_TOP_K}, got {value!r}"
        )
    return int(value)


# ---- images ---------------------------------------------------------------------------------


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode one encoded image after checking its size from the header alone.

    Raises:
        ApiError: 415 not an image, 413 more than ``max_pixels`` pixels, 400 corrupt or truncated.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns, then refuses, far above any limit of ours: both mean "too many pixels".
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))  # reads the header only, not the pixels
    except UnidentifiedImageError as e:
        raise ApiError(
            415, "not_an_image", f"{name}: not an image, or a format PIL cannot read"
        ) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, "image_too_large", f"{name}: too many pixels to decode safely ({e}); "
                       f"the limit is {max_pixels} (imrec serve --max-pixels)") from e  # fmt: skip
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ApiError(400, "bad_image", f"{name}: cannot read the image header ({e})") from e
    w, h = header.size
    if w * h > max_pixels:
        raise ApiError(413, "image_too_large", f"{name}: {w}x{h} = {w * h} pixels; the limit is "
                       f"{max_pixels} (imrec serve --max-pixels)")  # fmt: skip
    try:
        return load_image(data)
    except ImageReadError as e:
        detail = e.__cause__ or e  # the decoder's own words, e.g. "image file is truncated"
        raise ApiError(400, "bad_image", f"{name}: cannot decode the image ({detail})") from e
