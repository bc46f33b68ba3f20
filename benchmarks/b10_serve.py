"""B10 — `graft serve` under load, on the real fine-tuned MiniLM (VADER), against the goals of
the serving issue. Loopback only; every loop is bounded in requests and seconds.

    .venv/bin/python benchmarks/b10_serve.py --model RUN [--image-model DIR] [--soak 600]
        [--repeats 3] [--out docs/results/serve]

1. Saturation throughput, closed loop (64 connections), alternating B A B A …: the batched
   server (graft's defaults: --max-batch 32 --max-wait-ms 10) against the baseline, the same
   app with one forward pass per request and no batching (--max-batch 1 --max-wait-ms 0).
   S = the median of the batched server's runs. Goal: S ≥ 3× the baseline.
2. A lone request's latency (sequential), then p50/p99 in an open loop at 0.5·S and 0.8·S.
   Goal: p99 at 0.8·S ≤ 3× the lone request's p50.
3. Overload, open loop at 2·S: served ≥ 0.9·S, the rest 503, no other 5xx, no timeouts.
4. 10,000 fuzzed requests (random bytes, wrong types, huge fields, bad encodings, bad
   images); with --image-model also 3,000 against an image model. Goal: zero 5xx.
5. Soak at 0.5·S for --soak seconds: the server's resident memory (VmRSS), sampled every 5 s;
   drift = last minute's median against the second minute's. Goal: under 5 %.

Texts are the run's own test snippets (real VADER movie reviews), one per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen
from common import machine, save, table, verdict

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
BASELINE = ["--max-batch", "1", "--max-wait-ms", "0"]
BATCHED = ["--max-batch", "32", "--max-wait-ms", "10"]  # graft serve's defaults, spelled out


class Server:
    """``graft serve`` in its own process, on a free loopback port."""

    def __init__(self, model: Path, args: list[str]) -> None:
        self.log = Path(tempfile.mkstemp(suffix=".log")[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graft", "serve", str(model), "--host", HOST, "--port", "0",
             *args],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), cwd=ROOT,
        )  # fmt: skip
        self.port = int(self._event("listening")["port"])
        self.ready = self._event("ready")

    def _event(self, name: str, seconds: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if f'"event": "{name}"' in line:
                    return dict(json.loads(line))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"no {name} event in {seconds} s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def statuses_logged(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if '"status":' in line:
                status = str(json.loads(line)["status"])
                counts[status] = counts.get(status, 0) + 1
        return counts

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(120)
        self.log.unlink()
        return code


def predict_bodies(texts: list[str]) -> list[bytes]:
    return [
        loadgen.request_bytes("/v1/predict", json.dumps({"inputs": [t]}).encode()) for t in texts
    ]


def test_texts(model: Path, n: int) -> list[str]:
    """The run's own test snippets (real VADER movie reviews)."""
    from graft.deploy.variants import load_predictor, variant_sets

    examples = variant_sets(load_predictor(model), ("test",))["test"]
    return [str(t) for t in examples.inputs[:n]]


# --------------------------------------------------------------------------- fuzzing


def _png(rng: random.Random, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (rng.randrange(256), 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _bomb(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 8, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


ODD_REQUESTS = [
    b"GET /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PUT /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v2/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
]


def bad_length(value: bytes) -> bytes:
    """A request whose Content-Length is not a length."""
    raw = loadgen.request_bytes("/v1/predict", b"{}")
    return raw.replace(b"Content-Length: 2", b"Content-Length: " + value)


def fuzz_cases(rng: random.Random, n: int, image: bool) -> list[tuple[str, bytes]]:
    """``n`` malformed or hostile requests (a kind name, the raw request), in random order."""

    def post(body: bytes, ctype: str | None = "application/json", **extra: str) -> bytes:
        return loadgen.request_bytes("/v1/predict", body, ctype, extra)

    def j(value: Any) -> bytes:
        return post(json.dumps(value).encode())

    def noise(k: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(k))

    def text(k: int) -> str:
        alphabet = "abc xyz éü漢字🙂\u200b\u202e\t\n\"\\'<>{}"
        return "".join(rng.choice(alphabet) for _ in range(k))

    def image_b64() -> str:
        kind = rng.randrange(6)
        data = _png(rng, (rng.randrange(1, 300), rng.randrange(1, 300)))
        if kind == 0:
            data = data[: rng.randrange(1, len(data))]  # truncated
        elif kind == 1:
            data = noise(rng.randrange(1, 3000))  # not an image
        elif kind == 2:
            data = _bomb(rng.choice([20_000, 60_000]), rng.choice([20_000, 60_000]))
        elif kind == 3:
            data = b"GIF89a" + noise(100)
        return base64.b64encode(data).decode()

    def multipart(parts: list[tuple[str, bytes]], boundary: str = "fuzzb") -> bytes:
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in parts
        )
        return post(
            body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
        )

    makers: list[tuple[str, Any]] = [
        ("random bytes", lambda: post(noise(rng.randrange(0, 4000)))),
        ("random bytes, other type", lambda: post(noise(rng.randrange(1, 500)), rng.choice(
            [None, "text/plain", "application/xml", "multipart/form-data", "image/png",
             "application/json; charset=latin-1", "multipart/form-data; boundary="]))),
        ("json: not an object", lambda: j(rng.choice([[], "inputs", 3, None, True, [["a"]]]))),
        ("json: wrong inputs", lambda: j({"inputs": rng.choice(
            [None, 1, "a", {"a": 1}, [None], [1.5], [["nested"]], [{}], [True], []])})),
        ("json: wrong top_k", lambda: j({"inputs": ["a"], "top_k": rng.choice(
            [0, -1, 10**9, "2", 1.5, None, [], "x", True])})),
        ("json: unknown field", lambda: j({"inputs": ["a"], text(5): 1})),
        ("huge text", lambda: j({"inputs": [text(rng.choice([10_001, 50_000, 900_000]))]})),
        ("many inputs", lambda: j({"inputs": ["a"] * rng.choice([65, 500, 5000])})),
        ("over the body limit", lambda: post(b'{"inputs": ["' + b"a" * 4_100_000 + b'"]}')),
        ("deep nesting", lambda: post(b"[" * rng.choice([1000, 100_000]) + b"]" * 10)),
        ("bad unicode", lambda: post(rng.choice(
            [b'{"inputs": ["\\ud800"]}', b'{"inputs": ["\xff\xfe"]}', b'{"inputs": ["\\u0000"]}',
             b'\xef\xbb\xbf{"inputs": ["bom"]}', b'{"inputs": ["a\\udfff\\ud800b"]}']))),
        ("odd but valid text", lambda: j({"inputs": [text(rng.randrange(1, 300))]})),
        ("bad content-length", lambda: bad_length(rng.choice([b"-5", b"abc", b"9" * 20]))),
        ("wrong method or path", lambda: rng.choice(ODD_REQUESTS)),
        ("images as json", lambda: j({"inputs": [image_b64() for _ in range(rng.randrange(4))]})),
        ("images as multipart", lambda: multipart(
            [(rng.choice(["files", "files", "file", "top_k"]), base64.b64decode(image_b64()))
             for _ in range(rng.randrange(0, 4))])),
        ("broken multipart", lambda: post(b"--zz\r\n" + noise(rng.randrange(1, 400)),
                                          "multipart/form-data; boundary=zz")),
    ]  # fmt: skip
    cases = []
    for i in range(n):
        name, make = makers[i % len(makers)]
        cases.append((name, make()))
    rng.shuffle(cases)
    return cases


async def fuzz(port: int, cases: list[tuple[str, bytes]], concurrency: int = 8) -> dict[str, Any]:
    pool = loadgen.Pool(HOST, port, size=concurrency, timeout=60)
    by_kind: dict[str, dict[str, int]] = {}
    queue = list(cases)

    async def worker() -> None:
        while queue:
            name, raw = queue.pop()
            outcome = str(await pool.send(raw))
            kind = by_kind.setdefault(name, {})
            kind[outcome] = kind.get(outcome, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    pool.close()
    total: dict[str, int] = {}
    for counts in by_kind.values():
        for status, k in counts.items():
            total[status] = total.get(status, 0) + k
    server_errors = sum(k for s, k in total.items() if s.isdigit() and int(s) >= 500)
    return {"requests": len(cases), "statuses": total, "by_kind": by_kind, "5xx": server_errors}


# --------------------------------------------------------------------------- the phases


def saturation(model: Path, bodies: list[bytes], repeats: int, seconds: float) -> dict[str, Any]:
    """Closed-loop throughput of both servers, alternating which goes first."""
    runs: dict[str, list[dict[str, Any]]] = {"batched": [], "baseline": []}
    for r in range(repeats):
        order = ["batched", "baseline"] if r % 2 == 0 else ["baseline", "batched"]
        for side in order:
            server = Server(model, BATCHED if side == "batched" else BASELINE)
            pool = loadgen.Pool(HOST, server.port)
            loadgen.run(loadgen.closed_loop(pool, bodies, 64, 3))  # warm the connections
            result = loadgen.run(loadgen.closed_loop(pool, bodies, 64, seconds))
            server.stop()
            runs[side].append(result.summary())
            statuses = result.summary()["statuses"]
            print(f"  {side:9s} run {r + 1}: {result.rate(200):7.1f} req/s  {statuses}")
    s = statistics.median(x["ok_per_s"] for x in runs["batched"])
    base = statistics.median(x["ok_per_s"] for x in runs["baseline"])
    return {"runs": runs, "S": s, "baseline": base, "ratio": s / base}


def soak(
    server: Server, pool: loadgen.Pool, bodies: list[bytes], rate: float, seconds: float
) -> dict[str, Any]:
    """An open loop at ``rate`` for ``seconds``, the server's VmRSS sampled every 5 s; drift is
    the last minute's median against the second minute's (the first is warm-up)."""
    print(f"5. soak: {seconds:.0f} s at {rate:.0f}/s")
    samples: list[tuple[float, float]] = []
    outcomes: dict[str, int] = {}
    start, chunk = time.monotonic(), 5.0
    while time.monotonic() - start < seconds:
        result = loadgen.run(loadgen.open_loop(pool, bodies, rate, chunk))
        for o in result.outcomes:
            outcomes[str(o)] = outcomes.get(str(o), 0) + 1
        samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))
    minute = max(1, int(60 / chunk))
    early = statistics.median(r for _, r in samples[minute : 2 * minute] or samples[:1])
    late = statistics.median(r for _, r in samples[-minute:])
    print(f"  RSS {early:.1f} → {late:.1f} MB ({100 * (late - early) / early:+.2f} %)")
    return {
        "seconds": seconds, "rate": rate, "outcomes": outcomes,
        "rss_mb_second_minute": early, "rss_mb_last_minute": late,
        "drift": (late - early) / early, "samples": samples,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="the fine-tuned MiniLM VADER run")
    p.add_argument("--image-model", help="an image model to fuzz too")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20, help="each saturation / open-loop run")
    p.add_argument("--soak", type=float, default=600, help="soak seconds at 0.5·S")
    p.add_argument("--fuzz", type=int, default=10_000)
    p.add_argument("--out", default="docs/results/serve")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.seconds, args.soak, args.fuzz = 1, 5, 30, 300
    model = Path(args.model)
    texts = test_texts(model, 1000)
    bodies = predict_bodies(texts)
    record: dict[str, Any] = {
        "model": str(model),
        "settings": {"batched": BATCHED, "baseline": BASELINE},
    }

    print("1. saturation (closed loop, 64 connections)")
    sat = saturation(model, bodies, args.repeats, args.seconds)
    record["saturation"] = sat
    s = sat["S"]

    server = Server(model, BATCHED)
    record["served_as"] = {k: server.ready[k] for k in ("backend", "device", "precision")}
    pool = loadgen.Pool(HOST, server.port)
    print("2. latency: a lone request, then open loops at 0.5·S and 0.8·S")
    lone = loadgen.run(loadgen.sequential(pool, bodies, 300))
    record["lone"] = lone.summary()
    loads = {}
    for fraction in (0.5, 0.8):
        result = loadgen.run(loadgen.open_loop(pool, bodies, fraction * s, args.seconds))
        loads[str(fraction)] = {"rate": fraction * s, **result.summary()}
        print(f"  {fraction}·S = {fraction * s:.0f}/s: {result.summary()}")
    record["open_loop"] = loads

    print("3. overload: open loop at 2·S")
    over = loadgen.run(loadgen.open_loop(pool, bodies, 2 * s, args.seconds))
    record["overload"] = {
        "rate": 2 * s,
        **over.summary(),
        "p99_ms_503": round(over.percentile(99, 503), 2),
    }
    print(f"  {record['overload']}")
    pool.close()

    pool = loadgen.Pool(HOST, server.port)
    if args.fuzz > 0:
        print(f"4. fuzz: {args.fuzz} requests")
        rng = random.Random(0)
        record["fuzz"] = loadgen.run(fuzz(server.port, fuzz_cases(rng, args.fuzz, image=False)))
        record["fuzz"]["server_logged"] = server.statuses_logged()
        print(f"  {record['fuzz']['statuses']}  5xx: {record['fuzz']['5xx']}")
        record["after_fuzz_ok"] = loadgen.run(loadgen.sequential(pool, bodies, 20)).count(200) == 20
    if args.soak > 0:
        record["soak"] = soak(server, pool, bodies, 0.5 * s, args.soak)
    pool.close()
    record["exit_code"] = server.stop()

    if args.image_model:
        print("4b. fuzz the image model: 3000 requests")
        image = Server(Path(args.image_model), BATCHED)
        record["fuzz_image"] = loadgen.run(
            fuzz(image.port, fuzz_cases(random.Random(1), 3000, image=True))
        )
        record["fuzz_image"]["server_logged"] = image.statuses_logged()
        print(f"  {record['fuzz_image']['statuses']}  5xx: {record['fuzz_image']['5xx']}")
        image.stop()

    lone_p50 = record["lone"]["p50_ms"]
    p99_08 = loads["0.8"]["p99_ms"]
    overload = record["overload"]
    statuses = overload["statuses"]
    failed = statuses.get("timeout", 0) + statuses.get("reset", 0)
    failed += sum(v for k, v in statuses.items() if k.isdigit() and int(k) >= 500 and k != "503")
    served = overload["ok_per_s"] / s
    goals = [
        ["S / baseline", sat["ratio"], verdict(sat["ratio"], 3.0, False)],
        ["p99 at 0.8·S / lone p50", p99_08 / lone_p50, verdict(p99_08 / lone_p50, 3.0, True)],
        ["served at 2·S / S", served, verdict(served, 0.9, False)],
        ["other 5xx, timeouts, resets at 2·S", failed, verdict(failed, 0, True)],
    ]
    if "fuzz" in record:
        goals.append(["fuzz 5xx", record["fuzz"]["5xx"], verdict(record["fuzz"]["5xx"], 0, True)])
    if "soak" in record:
        drift = record["soak"]["drift"]
        goals.append(["soak RSS drift", drift, verdict(abs(drift), 0.05, True)])
    record["goals"] = {row[0]: {"value": row[1], "verdict": row[2]} for row in goals}
    table("B10 goals", ["goal", "value", "verdict"], goals)
    record["machine"] = machine()
    out = ROOT / args.out
    if not args.no_save:
        out.mkdir(parents=True, exist_ok=True)
        (out / ("results.quick.json" if args.quick else "results.json")).write_text(
            json.dumps(record, indent=1)
        )
    save("b10_serve", record, args.quick, args.no_save)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
