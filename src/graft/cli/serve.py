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
    # (option, field, type, what it is); each default is ServeSettings'.
    numbers: dict[str, list[tuple[str, str, type, str]]] = {
        "batching": [
            ("--max-batch", "max_batch", int, "inputs per forward pass"),
            ("--sub-batch", "sub_batch", int, "texts computed at a time, sorted by length"),
            ("--max-wait-ms", "max_wait_ms", float, "how long a batch waits for more inputs"),
            ("--max-queue", "max_queue", int, "inputs waiting at most; more are answered 503"),
        ],
        "limits": [
            ("--max-items", "max_items", int, "inputs per request"),
            ("--max-text-chars", "max_text_chars", int, "longest text, in characters"),
            ("--max-pixels", "max_pixels", int, "largest image, width x height"),
        ],
    }
    groups = {title: p.add_argument_group(title) for title in numbers}
    for title, options in numbers.items():
        for flag, name, kind, what in options:
            default = getattr(d, name)
            shown = f"{default:,}" if kind is int else f"{default:g}"
            groups[title].add_argument(flag, type=kind, default=default, help=f"{what} ({shown})")
    groups["limits"].add_argument("--max-body", default="4MB", help="largest request body (4MB)")
    groups["limits"].add_argument(
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
