"""Running the app with uvicorn: the socket bound first, one process or several, SIGTERM drained.

- The socket is bound before anything loads, so a port in use is a one-line error (exit 2), and
  connections made while the model loads wait in the listen backlog instead of being refused.
- One worker: this process serves; the model loads in the background (``/health/live`` answers,
  ``/health/ready`` says 503 until it is warm); a model that cannot be loaded ends the server
  with graft's error and exit code.
- ``--workers N``: uvicorn's supervisor starts N processes on the one socket, each with its own
  model copy and cores / N threads; the model is loaded once here first, so a broken model is
  reported before any worker starts. Prometheus values are shared through files.
- SIGTERM (or Ctrl-C): stop accepting, finish every accepted request, exit 0 (130 for Ctrl-C).
  uvicorn itself re-raises the signal after its graceful shutdown, which would end the process
  with 143; a server that drained cleanly has nothing to report.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import logging.config
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from graft.errors import GraftError, UsageError
from graft.serve.settings import SETTINGS_ENV, ServeSettings

log = logging.getLogger("graft.serve")

BACKLOG = 2048


class JsonLines(logging.Formatter):
    """One JSON object per log line: time, level, and the record's ``fields`` (graft's request
    and event lines) or its message (uvicorn's own)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        fields = getattr(record, "fields", None) or {"message": record.getMessage()}
        line = {"time": when.isoformat(timespec="milliseconds"), "level": record.levelname.lower()}
        return json.dumps({**line, **fields}, ensure_ascii=False, default=str)


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "graft.serve.server.JsonLines"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "graft.serve": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a UsageError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(
            f"--host {host!r}: not an address of this machine ({e.strerror})"
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror}",
            hint="choose another --port (0 picks a free one)",
        ) from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)  # the workers of --workers serve it too
    return sock


class GraftServer(uvicorn.Server):
    """A uvicorn server whose signals end the server without killing the process; it records
    the signal that stopped it and calls ``on_stop`` (readiness turns 503) at once."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop
        self.stop_signal: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            self.on_stop()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self.handle_exit) for s in handled}
        try:
            yield
        finally:  # unlike uvicorn's own, the signal is not raised again afterwards
            for number, handler in previous.items():
                signal.signal(number, handler)


def serve(settings: ServeSettings) -> int:
    """Serve ``settings.model`` until SIGTERM or Ctrl-C; the exit code."""
    from graft.deploy.variants import resolve_variant

    settings.check()
    resolve_variant(settings.model, settings.backend)  # a wrong folder fails before binding
    logging.config.dictConfig(LOG_CONFIG)
    if not settings.loopback and settings.api_key is None:
        log.warning(
            "no --api-key",
            extra={
                "fields": {
                    "event": "warning",
                    "message": f"listening on {settings.host} without --api-key: anyone who "
                    "can reach this address can use the model",
                }
            },
        )
    if settings.workers > 1:
        return _serve_workers(settings)
    sock = bind(settings.host, settings.port)
    return _serve_one(settings, sock)


def _listening(sock: socket.socket, settings: ServeSettings) -> None:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "listening",
        extra={
            "fields": {
                "event": "listening",
                "url": f"http://{shown}:{port}",
                "port": port,
                "workers": settings.workers,
                "threads": settings.intra_op_threads,
                "pid": os.getpid(),
            }
        },
    )


def _config(settings: ServeSettings, app: Any, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=LOG_CONFIG,
        access_log=False,  # graft writes its own line per request
        server_header=False,
        # Accepted requests finish within --timeout; past it (a stuck forward pass) give up.
        timeout_graceful_shutdown=int(settings.timeout) + 10,
        lifespan="on",
        **options,
    )


def _serve_one(settings: ServeSettings, sock: socket.socket) -> int:
    from graft.serve.app import create_app

    failure: list[GraftError] = []

    def on_fatal(error: GraftError) -> None:
        failure.append(error)
        server.should_exit = True

    app = create_app(settings, on_fatal)
    server = GraftServer(_config(settings, app), on_stop=app.state.graft.stopping)
    _listening(sock, settings)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    stopped_by = server.stop_signal
    if failure:
        raise failure[0]
    return 128 + signal.SIGINT if stopped_by == signal.SIGINT else 0


def _serve_workers(settings: ServeSettings) -> int:
    from uvicorn.supervisors import Multiprocess

    from graft.artifact import require_classifier
    from graft.deploy.variants import load_predictor
    from graft.serve.monitoring import MULTIPROCESS_ENV

    # A broken model fails here, once.
    require_classifier(load_predictor(settings.model, settings.backend), "graft serve")
    sock = bind(settings.host, settings.port)
    metrics_dir = tempfile.mkdtemp(prefix="graft-serve-metrics-")
    os.environ[SETTINGS_ENV] = settings.to_json()
    os.environ[MULTIPROCESS_ENV] = metrics_dir
    config = _config(
        settings,
        "graft.serve.app:app_from_environment",
        factory=True,
        workers=settings.workers,
    )
    _listening(sock, settings)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
