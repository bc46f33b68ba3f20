"""B11 — what graft serve's defaults rest on, measured in-process on the real fine-tuned MiniLM
(no HTTP): model throughput by gathered batch, sub-batch and precision, and the cost of running
torch on a second thread (two OpenMP teams on 2 cores).

    .venv/bin/python benchmarks/b11_serve_engine.py --model RUN [--seconds 4]

Texts are the run's own test snippets; each configuration runs for --seconds after a warm-up.
The forward passes run on one executor thread, as in the server.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from b10_serve import test_texts
from common import save, table


def throughput(engine: Any, texts: list[str], gather: int, seconds: float) -> float:
    engine.infer(texts[:gather])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        at = n % (len(texts) - gather)
        engine.infer(texts[at : at + gather])
        n += gather
    return n / (time.perf_counter() - start)


def lone_ms(engine: Any, text: str, repeats: int = 40) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.infer([text])
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    from graft.serve.settings import ServeSettings
    from graft.serve.state import load_engine

    # Every torch operation on one thread, as in the server: loading the test set loads the
    # model too, which on the main thread would start a second OpenMP team.
    compute = ThreadPoolExecutor(1)
    texts = compute.submit(test_texts, Path(args.model), 600).result()
    engine = compute.submit(load_engine, ServeSettings(model=args.model)).result()
    rows, record = [], {"throughput": [], "threads": {}}
    for precision in ("fp32", "bf16"):
        for gather, sub in ((1, 1), (32, 32), (32, 16), (32, 8), (64, 16), (64, 8)):
            engine.precision, engine.sub_batch = precision, sub
            rate = compute.submit(throughput, engine, texts, gather, args.seconds).result()
            rows.append([precision, gather, sub, rate])
            record["throughput"].append(
                {"precision": precision, "gather": gather, "sub_batch": sub, "texts_per_s": rate}
            )
    table("MiniLM texts/s (2 intra-op threads, one compute thread)",
          ["precision", "gathered", "sub-batch", "texts/s"], rows)  # fmt: skip
    engine.precision, engine.sub_batch = "bf16", 16
    alone = compute.submit(lone_ms, engine, texts[0]).result()
    lone_ms(engine, texts[0], 5)  # torch now also ran on the main thread: a second team
    after = compute.submit(lone_ms, engine, texts[0]).result()
    record["threads"] = {"one_text_ms_one_thread": alone, "one_text_ms_after_second": after}
    table("one text, bf16", ["torch on", "ms"],
          [["one thread only", alone], ["after a second thread ran torch", after]])  # fmt: skip
    save("b11_serve_engine", {"model": args.model, **record}, False, args.no_save)


if __name__ == "__main__":
    main()
