"""The outermost layer of the app (pure ASGI): request ids, load shedding, one log line and
the metrics of every request, and a 500 with only an id for anything that escaped."""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graft.serve.responses import PREDICT_PATH, error_response
from graft.serve.state import ServerState

log = logging.getLogger("graft.serve")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Gateway:
    """Outermost layer of the app: gives each request an id (the client's ``X-Request-ID`` if
    it is a sane one), turns a prediction away at once while the queue is full, counts and times
    each request, writes its log line, and turns any exception that escaped the app into a 500
    that shows the id and nothing else."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        info: dict[str, Any] = {"request_id": request_id}
        scope["state"] = info
        status, started = 500, False
        begin = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        shed = self.shed(scope)
        try:
            if shed:
                # Overloaded: answered before the body is read or any route runs, so that
                # turning requests away costs the least CPU, which the model needs.
                assert self.state.batcher is not None
                retry = str(self.state.batcher.retry_after())
                await error_response(503, "the queue is full", request_id, {"Retry-After": retry})(
                    scope, receive, send_with_id
                )
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            trace = traceback.format_exc()
            fields = {"event": "internal_error", "id": request_id, "traceback": trace}
            log.error("internal error", extra={"fields": fields})
            if not started:
                response = error_response(
                    500, f"internal error (id {request_id}; see the server log)", request_id
                )
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - begin
            path = scope.get("path", "")
            endpoint = PREDICT_PATH if shed else _endpoint(scope.get("route"))
            self.state.metrics.requests.labels(endpoint, str(status)).inc()
            self.state.metrics.latency.labels(endpoint).observe(seconds)
            line = {
                "id": request_id,
                "method": scope.get("method"),
                "path": path,
                "status": status,
                "ms": round(seconds * 1000, 2),
                **{k: v for k, v in info.items() if k in ("items", "batches", "inputs")},
            }
            log.info("request", extra={"fields": line})

    def shed(self, scope: Scope) -> bool:
        """Whether a request is for a prediction while the queue is full."""
        batcher = self.state.batcher
        return (
            batcher is not None
            and batcher.depth >= batcher.max_queue
            and scope.get("method") == "POST"
            and scope.get("path") == PREDICT_PATH
        )


def _endpoint(route: Any) -> str:
    """The route's path (a bounded set of label values), or ``other`` for unknown paths."""
    template = getattr(route, "path", None)
    return str(template) if template else "other"
