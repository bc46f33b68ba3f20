"""Serve a model over HTTP, micro-batching concurrent requests.

Serves a graft model (a run directory or its model/ folder), an ONNX export or an int8 model.
Concurrent requests are gathered into one forward pass of up to --max-batch inputs, or whatever
has arrived after --max-wait-ms. Endpoints: POST /v1/predict, GET /v1/metadata, /health/live,
/health/ready, /metrics (Prometheus), OpenAPI at /docs. Binds to 127.0.0.1 unless --host says
otherwise; give --api-key (or GRAFT_API_KEY) for anything wider. SIGTERM or Ctrl-C: stop
accepting, answer every accepted request, exit. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import os

from graft.cli.options import add_backend, add_model

NAME = "serve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from graft.serve.settings import API_KEY_ENV, ServeSettings

    d = ServeSettings(model="")
    add_model(p)
    add_backend(p)
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"0: any free port (default {d.port})")
    batching = p.add_argument_group("batching")
    batching.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help=f"inputs per forward pass ({d.max_batch})",
    )
    batching.add_argument(
        "--sub-batch",
        type=int,
        default=d.sub_batch,
        help=f"texts computed at a time, sorted by length ({d.sub_batch})",
    )
    batching.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"how long a batch waits for more inputs ({d.max_wait_ms:g})",
    )
    batching.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help=f"inputs waiting at most; more are answered 503 ({d.max_queue})",
    )
    limits = p.add_argument_group("limits")
    limits.add_argument(
        "--max-items", type=int, default=d.max_items, help=f"inputs per request ({d.max_items})"
    )
    limits.add_argument("--max-body", default="4MB", help="largest request body (4MB)")
    limits.add_argument(
        "--max-text-chars",
        type=int,
        default=d.max_text_chars,
        help=f"longest text ({d.max_text_chars:,})",
    )
    limits.add_argument(
        "--max-pixels",
        type=int,
        default=d.max_pixels,
        help=f"largest image, width x height ({d.max_pixels:,})",
    )
    limits.add_argument(
        "--timeout", default=f"{d.timeout:g}s", help="answer 504 after this long (30s)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=d.precision,
        help="auto: bf16 where the CPU/GPU computes it natively (not CNNs on a CPU), as in "
        "training; fp32: exactly graft predict's numbers",
    )
    p.add_argument("--device", default=d.device, help="auto (a GPU if there is one), cpu, cuda")
    p.add_argument("--workers", type=int, default=d.workers, help="processes, each a model copy")
    p.add_argument("--threads", type=int, help="threads per worker (default: cores / workers)")
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})")
    p.add_argument(
        "--log-inputs", action="store_true", help="write request texts into the log lines"
    )
    p.add_argument("--model-id", help="the id answers carry (default: NAME@HASH of the files)")


def run(args: argparse.Namespace) -> int:
    from graft.serve.server import serve
    from graft.serve.settings import API_KEY_ENV, ServeSettings
    from graft.units import parse_duration, parse_size

    settings = ServeSettings(
        model=args.model,
        host=args.host,
        port=args.port,
        backend=args.backend,
        max_batch=args.max_batch,
        sub_batch=args.sub_batch,
        precision=args.precision,
        device=args.device,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_items=args.max_items,
        max_body=parse_size(args.max_body, "--max-body"),
        max_text_chars=args.max_text_chars,
        max_pixels=args.max_pixels,
        timeout=parse_duration(args.timeout, "--timeout"),
        workers=args.workers,
        threads=args.threads,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        log_inputs=args.log_inputs,
        model_id=args.model_id,
    )
    return serve(settings)
