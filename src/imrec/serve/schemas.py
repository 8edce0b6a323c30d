"""The shapes of the service's requests and responses, as pydantic models for OpenAPI.

``POST /v1/predict`` and ``POST /v1/explain`` take either a multipart form or a JSON body. FastAPI
derives one request body per endpoint from its parameters, so both endpoints read the request
themselves and describe the two accepted bodies with :func:`request_bodies`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 1000


class PredictJSON(BaseModel):
    """JSON body of ``POST /v1/predict``."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(
        min_length=1,
        description="Encoded image files (PNG, JPEG, ...) in base64, or data URLs "
        "('data:image/png;base64,...').",
    )
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="Labels per image (classifiers).")
    accept_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Classifiers: the share of in-distribution images to accept, which sets "
        "the score threshold below which an image is unknown (default: the model's own).",
    )
    reject: bool = Field(True, description="Classifiers: false never answers unknown.")


class ExplainJSON(BaseModel):
    """JSON body of ``POST /v1/explain``."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="One encoded image in base64, or a data URL.")
    target: str | None = Field(None, description="The label to explain; default: the prediction.")
    raw: bool = Field(False, description="Also return the map itself as a list of rows.")


class Label(BaseModel):
    label: str
    probability: float


class Box(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the input image's pixels.")
    label: str
    score: float


class Result(BaseModel):
    """One image's answer: ``top`` for a classifier, ``width``/``height``/``boxes`` for a detector."""

    input: str = Field(description="The file name (multipart) or 'images[i]' (JSON).")
    top: list[Label] | None = None
    score: float | None = Field(
        None, description="Classifiers: the out-of-distribution score (higher = more familiar)."
    )
    unknown: bool | None = Field(
        None, description="Classifiers: true when the image is not confidently one of the classes."
    )
    blank: bool | None = Field(None, description="Classifiers: true for a blank image.")
    width: int | None = None
    height: int | None = None
    boxes: list[Box] | None = None


class PredictResponse(BaseModel):
    model: str
    version: str
    task: str
    results: list[Result]


class ExplainResponse(BaseModel):
    model: str
    version: str
    label: str = Field(description="The predicted label.")
    probability: float
    target: str = Field(description="The label the map explains.")
    target_probability: float
    method: str = Field(description="'gradcam', or 'saliency' for a model without a feature map.")
    overlay: str = Field(description="The map over the prepared input, as a PNG data URL.")
    size: list[int] = Field(description="Height and width of the map (the model's input size).")
    map: list[list[float]] | None = Field(None, description="The map itself, with raw=true.")


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable name for the kind of error, e.g. 'not_an_image'.")
    message: str = Field(description="What was wrong, for a person.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry of a route: each status code documented with the error body."""
    what = {
        400: "Unreadable input: a corrupt or truncated image, bad base64, a broken form.",
        413: "Too large: the upload, the number of files or an image's pixels.",
        415: "Not an image, or a body that is neither multipart/form-data nor JSON.",
        422: "A missing or invalid field.",
        503: "The model is not ready (starting or shutting down).",
    }
    return {c: {"model": ErrorResponse, "description": what[c]} for c in codes}


def request_bodies(json_model: type[BaseModel], files: dict[str, Any], form: dict[str, Any]):
    """``openapi_extra`` with the two request bodies an endpoint reads: multipart and JSON.

    Args:
        json_model: the JSON body's model.
        files: multipart file fields, name -> schema.
        form: other multipart fields, name -> schema.
    """
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {**files, **form},
                        "required": list(files),
                    }
                },
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


FILE = {"type": "string", "format": "binary"}
