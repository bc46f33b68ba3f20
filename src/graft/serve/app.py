"""The HTTP API of ``graft serve``: a FastAPI app around one model and one micro-batcher.

Endpoints (OpenAPI at ``/docs``):

- ``POST /v1/predict``: labels and probabilities of one or more inputs;
- ``GET /v1/metadata``: labels, preprocessing, backbone, training metrics, versions;
- ``GET /health/live``: the process answers; ``GET /health/ready``: the model is loaded and
  warmed up (503 before, and while the server stops);
- ``GET /metrics``: Prometheus.

Every answer that is not a success is JSON ``{"error": {"status", "message", "id"}}`` with
the right status: 401 without the API key, 404/405, 413 for a body over ``--max-body`` (counted
while it is read, so a chunked upload cannot slip past), 415 for a content type the model does
not take, 422 for anything else wrong in the request, 503 (+ ``Retry-After``) while the model
loads or when the queue is full, 504 past ``--timeout``, 500 for a bug: the message then
carries only an id, and the log the traceback. One JSON log line per request: id, method,
path, status, milliseconds, inputs and the sizes of the batches they were computed in (the
inputs themselves only with ``--log-inputs``).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import Message

from graft.errors import GraftError
from graft.serve.batcher import QueueFull
from graft.serve.engine import Engine
from graft.serve.gateway import Gateway
from graft.serve.inputs import (
    InvalidInput,
    Limits,
    UnsupportedMedia,
    check_files,
    media_type,
    parse_json,
    parse_top_k,
)
from graft.serve.responses import API_VERSION, PREDICT_PATH, ApiError, error_response
from graft.serve.settings import ServeSettings
from graft.serve.state import ServerState


def create_app(
    settings: ServeSettings, on_fatal: Callable[[GraftError], None] | None = None
) -> FastAPI:
    """The app serving ``settings.model``; the model loads in the background once the app
    starts. ``on_fatal`` is called when it cannot be loaded (``graft serve`` then exits)."""
    import graft

    state = ServerState(settings, on_fatal)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        yield
        await state.close()

    app = FastAPI(
        title="graft model server",
        version=graft.__version__,
        description="Predictions of one fine-tuned graft model, micro-batched.",
        lifespan=lifespan,
    )
    app.state.graft = state
    app.add_middleware(Gateway, state=state)
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``graft serve --workers N`` (uvicorn's factory)."""
    import os

    from graft.runtime import end_with_parent
    from graft.serve.settings import SETTINGS_ENV

    end_with_parent()  # a worker drains and ends when its supervisor is killed
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, _id(request), exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), _id(request), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}", _id(request))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "inputs": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "texts (a text model) or base64 images (an image model)",
                    },
                    "top_k": {"type": "integer", "minimum": 1},
                },
            },
            "example": {"inputs": ["a quietly devastating film"], "top_k": 2},
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "top_k": {"type": "integer"},
                },
            }
        },
    },
}


_ERROR = {"error": {"status": 422, "message": "inputs[0] is empty: give a text", "id": "…"}}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "one prediction per input, in order",
        "content": {
            "application/json": {
                "example": {
                    "model_id": "RUN@0123456789ab",
                    "predictions": [
                        {
                            "label": "positive",
                            "score": 0.93,
                            "top_k": [
                                {"label": "positive", "score": 0.93},
                                {"label": "negative", "score": 0.07},
                            ],
                        }
                    ],
                }
            }
        },
    },
    **{
        status: {"description": what, "content": {"application/json": {"example": _ERROR}}}
        for status, what in (
            (401, "no valid API key (with --api-key)"),
            (413, "the body is over --max-body"),
            (415, "a content type the model does not take"),
            (422, "the request is not usable: the message says why and where"),
            (503, "the model is loading, or the queue is full (see Retry-After)"),
            (504, "no answer within --timeout"),
        )
    },
}


def _add_routes(app: FastAPI, state: ServerState) -> None:
    settings = state.settings

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        expected = settings.api_key.encode()
        # Constant time: how much of a guessed key is right must not show in the timing.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise ApiError(
                401,
                "a valid API key is required (Authorization: Bearer KEY)",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """The process is up and answers."""
        return {"status": "alive"}

    @app.get("/health/ready", tags=["health"])
    async def ready() -> Response:
        """200 once the model is loaded and warmed up; 503 before, after a failed load, and
        while the server stops."""
        if state.status == "ready":
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": state.status}, 503, {"Retry-After": "1"})

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        authorize(request)
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get(f"/{API_VERSION}/metadata", tags=["model"])
    async def metadata(request: Request) -> dict[str, Any]:
        """The model: labels, preprocessing, backbone, training metrics, graft's version."""
        authorize(request)
        engine, _ = state.ready_engine()
        return engine.metadata()

    @app.post(
        PREDICT_PATH,
        tags=["model"],
        openapi_extra={"requestBody": _PREDICT_BODY},
        responses=_PREDICT_RESPONSES,
    )
    async def predict(request: Request) -> Response:
        """Labels and probabilities of the inputs: ``label``, ``score`` and the ``top_k`` most
        probable labels of each, in order."""
        authorize(request)
        started = time.monotonic()
        engine, batcher = state.ready_engine()
        limits = Limits(settings.max_items, settings.max_text_chars, len(engine.labels))
        try:
            kind = _media(request, engine.modality)
        except UnsupportedMedia as e:
            raise ApiError(415, str(e)) from None
        body = await read_body(request, settings.max_body)
        try:
            items, top_k = await _parse(request, kind, body, engine, limits)
            if engine.modality == "image":
                items = await asyncio.to_thread(_decode_images, engine, items, settings.max_pixels)
        except InvalidInput as e:
            raise ApiError(422, str(e)) from None
        scope_state = request.scope.setdefault("state", {})
        scope_state["items"] = len(items)
        if settings.log_inputs and engine.modality == "text":
            scope_state["inputs"] = items
        try:
            futures = batcher.submit(items)
        except QueueFull as e:
            raise ApiError(503, str(e), {"Retry-After": str(e.retry_after)}) from None
        left = settings.timeout - (time.monotonic() - started)
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), max(left, 0.001))
        except TimeoutError:
            raise ApiError(504, f"no answer within {settings.timeout:g} s (--timeout)") from None
        scope_state["batches"] = sorted({r.batch_size for r in results})
        labels = engine.labels
        predictions = []
        for r in results:
            order = r.probabilities.argsort()[::-1][:top_k]
            top = [{"label": labels[i], "score": float(r.probabilities[i])} for i in order]
            predictions.append({**top[0], "top_k": top})
        # A ready Response: FastAPI would otherwise re-encode and validate the dict (its
        # jsonable_encoder walks every value), per request, on the thread that parses HTTP.
        return JSONResponse({"model_id": engine.model_id, "predictions": predictions})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes: a declared
    Content-Length is checked first, then the bytes actually received, so a chunked upload
    (no length) or a lying length are stopped while they are read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    # The rest of the body is not read: the connection closes after the answer.
    return ApiError(413, f"the body is over {limit:,} bytes (--max-body)", {"Connection": "close"})


def _media(request: Request, modality: str) -> str:
    """The request's content type, if this model takes it (checked before the body is read)."""
    kind = media_type(request.headers.get("content-type"))
    if kind == "application/json" or (kind == "multipart/form-data" and modality == "image"):
        return kind
    if kind == "multipart/form-data":
        raise UnsupportedMedia('a text model takes JSON: {"inputs": ["a text", ...]}')
    takes = "application/json" + (" or multipart/form-data" if modality == "image" else "")
    raise UnsupportedMedia(f"content type {kind or '(none)'!r}: this model takes {takes}")


async def _parse(
    request: Request, kind: str, body: bytes, engine: Engine, limits: Limits
) -> tuple[list[Any], int]:
    if kind == "application/json":
        parsed = parse_json(body, engine.modality, limits)
        return parsed.items, parsed.top_k
    return await _parse_form(request, body, limits)


async def _parse_form(request: Request, body: bytes, limits: Limits) -> tuple[list[Any], int]:
    """A multipart form (already read, within the body limit): its ``files`` and ``top_k``."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, replay)
    try:
        form = await form_request.form(
            max_files=limits.max_items, max_fields=8, max_part_size=len(body) + 1
        )
    except MultiPartException as e:
        raise InvalidInput(f"malformed multipart form ({e.message})") from None
    unknown = sorted(set(form.keys()) - {"files", "top_k"})
    if unknown:
        raise InvalidInput(f"unknown form field {unknown[0]!r}: a request has files and top_k")
    files = form.getlist("files")
    if any(not isinstance(f, UploadFile) for f in files):
        raise InvalidInput('"files" must be file parts, not plain form fields')
    check_files(len(files), limits)
    top_k = parse_top_k(form.get("top_k"), limits)
    data = [await f.read() for f in files if isinstance(f, UploadFile)]
    await form.close()
    return data, top_k


def _decode_images(engine: Engine, items: list[bytes], max_pixels: int) -> list[Any]:
    """Decode the uploads (Pillow, in a worker thread: decoding is CPU work, and no torch
    operation runs here); an unusable one is a 422 that names it."""
    out = []
    for i, data in enumerate(items):
        try:
            out.append(engine.image_input(data, f"inputs[{i}]", max_pixels))
        except GraftError as e:
            raise InvalidInput(e.message) from None
    return out
