"""A small HTTP/1.1 load generator for a server on loopback: closed loop (saturation), open
loop at a fixed rate (latency under load, overload), and raw requests (fuzzing).

Why not locust, wrk or hey: on a 2-core machine the client shares the cores with the server,
so it must cost as little CPU per request as possible (raw asyncio streams on uvloop, requests
pre-encoded), and the open loop must send on schedule whatever the answers do, measuring each
latency from the request's *scheduled* time so that a stalled server cannot hide its stall
(coordinated omission): wrk and hey are closed-loop, locust is closed-loop per user and heavy.
Loopback only: the host is checked. Every loop is bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A request's outcome: an HTTP status, or "timeout" / "reset" (the connection broke).
Outcome = int | str
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: Seconds an idle connection is reused: below uvicorn's keep-alive timeout (5 s), so that the
#: client never sends on a connection the server is closing (real clients retry that case).
KEEP_ALIVE = 4.0


def request_bytes(path: str, body: bytes, content_type: str | None = "application/json",
                  extra: dict[str, str] | None = None) -> bytes:  # fmt: skip
    """A whole HTTP/1.1 POST, head and body."""
    head = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    if content_type is not None:
        head.append(f"Content-Type: {content_type}")
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Pool:
    """Keep-alive connections to one loopback server; at most ``size`` at once."""

    host: str
    port: int
    size: int = 512
    timeout: float = 60.0
    _idle: list[tuple[Connection, float]] = field(default_factory=list)  # (conn, last used)
    _slots: asyncio.Semaphore | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"{self.host}: this load generator only targets loopback")

    async def send(self, raw: bytes) -> Outcome:
        """Send one pre-encoded request; its status (or how it failed)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:  # connections belong to one loop
            self._idle.clear()
            self._slots, self._loop = asyncio.Semaphore(self.size), loop
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                conn, since = self._idle.pop()
                if loop.time() - since > KEEP_ALIVE:  # the server may be closing it now
                    self._close(conn)
                    conn = None
            try:
                if conn is None:
                    conn = await asyncio.open_connection(self.host, self.port)
                status, keep = await asyncio.wait_for(self._exchange(conn, raw), self.timeout)
            except TimeoutError:
                self._close(conn)
                return "timeout"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                self._close(conn)
                return "reset"
            if keep:
                self._idle.append((conn, loop.time()))
            else:
                self._close(conn)
            return status

    @staticmethod
    async def _exchange(conn: Connection, raw: bytes) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")  # one call for the whole head: cheap
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        await reader.readexactly(length)
        return status, keep

    @staticmethod
    def _close(conn: Connection | None) -> None:
        if conn is not None:
            conn[1].close()

    def close(self) -> None:
        for conn, _ in self._idle:
            self._close(conn)
        self._idle.clear()


@dataclass
class Run:
    """What one load run saw: every request's outcome and latency (seconds), and the CPU
    seconds the load generator itself used (it shares the machine with the server)."""

    seconds: float
    outcomes: list[Outcome]
    latencies: list[float]
    client_cpu: float = 0.0

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o == outcome)

    def rate(self, outcome: Outcome = 200) -> float:
        """Requests per second that ended in ``outcome``."""
        return self.count(outcome) / self.seconds

    def percentile(self, q: float, outcome: Outcome = 200) -> float:
        """Latency percentile in milliseconds of the requests that ended in ``outcome``."""
        xs = [t for o, t in zip(self.outcomes, self.latencies, strict=True) if o == outcome]
        return float(np.percentile(xs, q) * 1000) if xs else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "requests": len(self.outcomes),
            "statuses": {str(k): v for k, v in sorted(Counter(self.outcomes).items(), key=str)},
            "ok_per_s": round(self.rate(200), 1),
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p99_ms": round(self.percentile(99), 2),
            "client_cores": round(self.client_cpu / self.seconds, 3) if self.seconds else 0,
        }


async def closed_loop(pool: Pool, bodies: list[bytes], clients: int, seconds: float) -> Run:
    """``clients`` senders, each sending its next request when the last is answered."""
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []
    latencies: list[float] = []
    start = loop.time()
    end = start + seconds

    async def client(k: int) -> None:
        i = k
        while loop.time() < end:
            sent = loop.time()
            outcomes.append(await pool.send(bodies[i % len(bodies)]))
            latencies.append(loop.time() - sent)
            i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    return Run(loop.time() - start, outcomes, latencies)


async def open_loop(pool: Pool, bodies: list[bytes], rate: float, seconds: float) -> Run:
    """Requests sent at ``rate`` per second on a fixed schedule, for ``seconds``, whatever
    the server answers; each latency counts from the scheduled send time."""
    loop = asyncio.get_running_loop()
    n = int(rate * seconds)
    outcomes: list[Outcome] = [0] * n
    latencies = [0.0] * n
    start = loop.time() + 0.05

    async def one(i: int, due: float) -> None:
        outcomes[i] = await pool.send(bodies[i % len(bodies)])
        latencies[i] = loop.time() - due

    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    return Run(loop.time() - start, outcomes, latencies)


async def sequential(pool: Pool, bodies: list[bytes], count: int) -> Run:
    """One request at a time: the latency of a lone request."""
    loop = asyncio.get_running_loop()
    outcomes, latencies = [], []
    start = loop.time()
    for i in range(count):
        sent = loop.time()
        outcomes.append(await pool.send(bodies[i % len(bodies)]))
        latencies.append(loop.time() - sent)
    return Run(loop.time() - start, outcomes, latencies)


def run(coroutine: Any) -> Any:
    """Run on uvloop when it is there (a cheaper client), else asyncio's own loop; a
    :class:`Run` records the CPU time the client spent."""
    start = time.process_time()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coroutine)
    else:
        result = uvloop.run(coroutine)
    if isinstance(result, Run):
        result.client_cpu = time.process_time() - start
    return result
