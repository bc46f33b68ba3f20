"""graft serve: a real server started as a subprocess on a free loopback port, spoken to over HTTP.

Expected answers are computed here independently: probabilities from the model loaded in this
process (graft's Predictor, not the server's code), the labels of `graft predict` run as its
own process, counts of forward passes from the requests this test sent.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import TINY_BACKBONES, build_tiny
from PIL import Image

LAUNCH = "import sys; from graft.cli import main; sys.exit(main())"
JSON = {"content-type": "application/json"}
TEXTS = ["a quietly devastating film", "boring plot", "the actor was great", "dull"]


class Server:
    """``graft serve MODEL --port 0 ARGS…`` in its own process; its JSON log lines in a file."""

    def __init__(self, model: Path, *args: str, log: Path, wait_ready: bool = True) -> None:
        self.log_path = log
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "serve", str(model), "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env=env,
            start_new_session=True,  # its own process group: the clean-up ends its workers too
        )
        event = self.wait_for(lambda e: e.get("event") == "listening", 60)
        self.url = event["url"]
        if wait_ready:
            self.wait_ready()

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"raw": line})
        return out

    def wait_for(self, match: Any, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for event in self.lines():
                if match(event):
                    return event
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out; log:\n{self.log()}")

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.get("/health/ready").status_code == 200:
                return
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"not ready; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str = "/v1/predict", **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)

    def metric(self, name: str) -> float:
        """The sum of every sample named ``name`` in /metrics."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig: int = signal.SIGTERM, seconds: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(seconds)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: Any) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start servers that are killed at the end of the test whatever happens."""
    started: list[Server] = []

    def start(model: Path, *args: str, wait_ready: bool = True) -> Server:
        server = Server(
            model, *args, log=tmp_path / f"server{len(started)}.log", wait_ready=wait_ready
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random-init CNN (timm test_efficientnet, 32 px) with classes a, b, c."""
    from graft.artifact import save_model
    from graft.data.types import LabelMap

    folder = tmp_path_factory.mktemp("image-model") / "model"
    backbone = build_tiny(TINY_BACKBONES["timm"][0], None)
    save_model(folder, backbone, LabelMap(("a", "b", "c")), plan={})
    return folder


def png(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    """A PNG of random pixels (``seed`` < 0: of one grey, which compresses to little)."""
    rng = np.random.default_rng(abs(seed))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = (
        rng.integers(0, 256, shape, dtype=np.uint8) if seed >= 0 else np.full(shape, 90, np.uint8)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    return buffer.getvalue()


def expected_probabilities(model: Path, inputs: list[Any]) -> np.ndarray:
    """The probabilities graft's own Predictor gives (in this process, unbatched with the
    server's requests)."""
    from graft.artifact import load_model
    from graft.data.types import Examples

    loaded = load_model(model)
    modality = loaded.modality
    examples = Examples(modality, inputs, ["?"] * len(inputs), "test")
    return loaded.logits(examples).softmax(1).numpy()


# --------------------------------------------------------------------------- endpoints


def test_every_endpoint_of_a_text_model(text_model: Path, serve: Any) -> None:
    server = serve(text_model, "--max-wait-ms", "1", "--precision", "fp32")
    assert server.get("/health/live").json() == {"status": "alive"}
    assert server.get("/health/ready").json() == {"status": "ready"}
    meta = server.get("/v1/metadata").json()
    assert meta["labels"] == ["neg", "pos"] and meta["modality"] == "text"
    assert meta["preprocess"] == {"kind": "text", "max_length": 16}
    name, _, digest = meta["model_id"].partition("@")
    assert name == text_model.parent.name and len(digest) == 12
    assert meta["precision"] == "fp32" and meta["device"] == "cpu"

    answer = server.post(json={"inputs": TEXTS, "top_k": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_id"] == meta["model_id"]
    expected = expected_probabilities(text_model, TEXTS)
    for row, prediction in zip(expected, body["predictions"], strict=True):
        best = int(row.argmax())
        assert prediction["label"] == ["neg", "pos"][best]
        assert prediction["score"] == pytest.approx(float(row[best]), abs=1e-5)
        assert [t["label"] for t in prediction["top_k"]] == [
            ["neg", "pos"][best],
            ["neg", "pos"][1 - best],
        ]
        assert sum(t["score"] for t in prediction["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert (
        len(server.post(json={"inputs": ["x"], "top_k": 1}).json()["predictions"][0]["top_k"]) == 1
    )

    metrics = server.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert server.metric("graft_inputs_total") == len(TEXTS) + 1
    assert server.metric('graft_requests_total{endpoint="/v1/predict",status="200"}') == 2
    for name in (
        "graft_request_duration_seconds_bucket",
        "graft_batch_size_bucket",
        "graft_queue_depth",
    ):
        assert name in metrics.text
    assert server.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    assert server.get("/docs").status_code == 200

    request_lines = [e for e in server.lines() if e.get("path") == "/v1/predict"]
    assert request_lines and all({"id", "status", "ms", "items"} <= set(e) for e in request_lines)
    assert "quietly devastating" not in server.log()  # no input text in the logs by default
    assert server.stop() == 0


def test_predictions_equal_graft_predicts_for_text_and_images(
    text_model: Path, image_model: Path, serve: Any, tmp_path: Path
) -> None:
    def cli_predict(model: Path, inputs: list[str]) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-c", LAUNCH, "predict", str(model), *inputs, "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines()]

    text_server = serve(text_model, "--precision", "fp32")
    served = text_server.post(json={"inputs": TEXTS}).json()["predictions"]
    for mine, theirs in zip(served, cli_predict(text_model, TEXTS), strict=True):
        assert mine["label"] == theirs["label"]
        assert mine["score"] == pytest.approx(theirs["probability"], abs=1e-5)
    # bf16 (the default where the CPU computes it natively) against predict in bf16: the
    # same computation, batched differently, so equal to bf16's rounding.
    bf16_server = serve(text_model, "--precision", "bf16")
    served = bf16_server.post(json={"inputs": TEXTS}).json()["predictions"]
    theirs_bf16 = cli_predict(text_model, [*TEXTS, "--precision", "bf16"])
    for mine, theirs in zip(served, theirs_bf16, strict=True):
        assert mine["score"] == pytest.approx(theirs["probabilities"][mine["label"]], abs=2e-2)

    # Images of other sizes and modes, uploaded both ways, against the same files on disk.
    images = [png(1), png(2, (64, 64)), png(3, (17, 50), mode="L")]
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)
    expected = cli_predict(image_model, [str(p) for p in paths])
    image_server = serve(image_model)  # auto: fp32, as for every CNN on a CPU
    assert image_server.get("/v1/metadata").json()["precision"] == "fp32"
    as_json = image_server.post(json={"inputs": [base64.b64encode(d).decode() for d in images]})
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)]
    as_form = image_server.post(files=files, data={"top_k": "3"})
    assert as_json.status_code == 200 and as_form.status_code == 200, as_form.text
    for answer in (as_json.json()["predictions"], as_form.json()["predictions"]):
        for mine, theirs in zip(answer, expected, strict=True):
            assert mine["label"] == theirs["label"]
            assert mine["score"] == pytest.approx(theirs["probability"], abs=1e-5)
    assert len(as_form.json()["predictions"][0]["top_k"]) == 3
    url = "data:image/png;base64," + base64.b64encode(images[0]).decode()
    assert (
        image_server.post(json={"inputs": [url]}).json()["predictions"][0]["label"]
        == expected[0]["label"]
    )


def test_an_onnx_export_is_served_on_onnx_runtime_like_graft_predict_runs_it(
    text_model: Path, serve: Any, tmp_path: Path
) -> None:
    from graft.deploy.export import export

    onnx = tmp_path / "onnx"
    export(text_model, "onnx", onnx)
    server = serve(onnx)
    meta = server.get("/v1/metadata").json()
    assert (meta["backend"], meta["format"], meta["precision"]) == ("onnxruntime", "onnx", "fp32")
    served = server.post(json={"inputs": TEXTS}).json()["predictions"]
    out = subprocess.run(
        [sys.executable, "-c", LAUNCH, "predict", str(onnx), *TEXTS, "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for mine, line in zip(served, out.splitlines(), strict=True):
        theirs = json.loads(line)
        assert mine["label"] == theirs["label"]
        assert mine["score"] == pytest.approx(theirs["probability"], abs=1e-5)
    refused = _cli(str(onnx), "--precision", "bf16", "--port", "0")
    assert refused.returncode == 2 and "ONNX model computes in the types" in refused.stderr


# --------------------------------------------------------------------------- errors


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG that declares ``width``×``height`` pixels: tiny on the wire, huge decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    row = b"\x00" + b"\x00" * width
    pixels = zlib.compress(row * 16, 9)  # only a few rows: decoding would fail late, if at all
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_every_error_status_with_a_message_and_no_trace(
    text_model: Path, image_model: Path, serve: Any
) -> None:
    text = serve(text_model, "--max-items", "4", "--max-body", "2000", "--max-text-chars", "100")
    cases: list[tuple[Any, int, str]] = [
        (
            {"content": b"not json", "headers": {"content-type": "application/json"}},
            422,
            "not valid JSON",
        ),
        ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 422, "UTF-8"),
        ({"json": ["a"]}, 422, "JSON object"),
        ({"json": {"texts": ["a"]}}, 422, "unknown field 'texts'"),
        ({"json": {"top_k": 1}}, 422, '"inputs" is missing'),
        ({"json": {"inputs": []}}, 422, "empty"),
        ({"json": {"inputs": ["  "]}}, 422, "inputs[0] is empty"),
        ({"json": {"inputs": ["a", 3]}}, 422, "inputs[1] must be a text"),
        (
            {"content": b'{"inputs": ["ok", "\\ud800 x"]}', "headers": JSON},
            422,
            "not valid Unicode",
        ),
        ({"json": {"inputs": ["a"] * 5}}, 422, "limit is 4"),
        ({"json": {"inputs": ["a" * 101]}}, 422, "--max-text-chars"),
        ({"json": {"inputs": ["a"], "top_k": 3}}, 422, "top_k"),
        ({"json": {"inputs": ["a"], "top_k": True}}, 422, "top_k"),
        (
            {
                "content": b"[" * 100_000 + b"]" * 100_000,
                "headers": {"content-type": "application/json"},
            },
            413,
            "--max-body",
        ),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
        ({"files": [("files", ("a.png", png(0), "image/png"))]}, 415, "text model takes JSON"),
    ]
    for kwargs, status, message in cases:
        answer = text.post(**kwargs)
        assert answer.status_code == status, (kwargs, answer.text)
        error = answer.json()["error"]
        assert message in error["message"] and error["id"] == answer.headers["x-request-id"]
        assert "Traceback" not in answer.text
    # Over the limit without a Content-Length: a chunked upload is counted while it is read.
    chunked = text.post(
        content=iter([b'{"inputs": ["', b"a" * 1500, b"a" * 1500, b'"]}']),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    assert text.get("/nowhere").status_code == 404
    assert text.get("/v1/predict").status_code == 405
    assert text.post(json={"inputs": ["still fine"]}).status_code == 200  # the server goes on

    image = serve(image_model, "--max-pixels", "1000000")
    bad_images = [
        ({"json": {"inputs": ["%%% not base64"]}}, "not valid base64"),
        ({"json": {"inputs": [base64.b64encode(b"GIF89a broken").decode()]}}, "inputs[0]"),
        ({"json": {"inputs": [base64.b64encode(b"plain words").decode()]}}, "not an image"),
        ({"json": {"inputs": [base64.b64encode(_bomb_png(30_000, 30_000)).decode()]}}, "too large"),
        (
            {"json": {"inputs": [base64.b64encode(png(-5, (1100, 1000))).decode()]}},
            "limit 1,000,000",
        ),
        ({"json": {"inputs": [{"b64": "x"}]}}, "base64-encoded image"),
        ({"files": [("files", ("a.png", png(1)[:60], "image/png"))]}, "truncated or corrupt"),
        ({"files": [("other", ("a.png", png(1), "image/png"))]}, "unknown form field 'other'"),
        ({"data": {"files": "not a file"}, "files": [("x", ("", b"", "a/b"))]}, "form field"),
        (
            {
                "content": b"--xyz\r\ngarbage",
                "headers": {"content-type": "multipart/form-data; boundary=xyz"},
            },
            "",
        ),
    ]
    for kwargs, message in bad_images:
        answer = image.post(**kwargs)
        assert answer.status_code == 422, (message, answer.text)
        assert message in answer.json()["error"]["message"]
    assert image.post(json={"inputs": [base64.b64encode(png(9)).decode()]}).status_code == 200
    assert image.metric('graft_requests_total{endpoint="/v1/predict",status="500"}') == 0
    assert text.stop() == 0 and image.stop() == 0


def test_api_key_is_required_everywhere_but_health(text_model: Path, serve: Any) -> None:
    server = serve(text_model, "--api-key", "s3cret")
    body = {"inputs": ["a"]}
    assert server.post(json=body).status_code == 401
    wrong = server.post(json=body, headers={"authorization": "Bearer s3crex"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert server.get("/metrics").status_code == 401
    assert server.get("/v1/metadata").status_code == 401
    assert server.get("/health/ready").status_code == 200
    ok = {"authorization": "Bearer s3cret"}
    assert server.post(json=body, headers=ok).status_code == 200
    assert server.get("/metrics", headers=ok).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(text_model: Path, serve: Any) -> None:
    # One input per forward pass, and room for two waiting: 24 at once cannot all be queued.
    server = serve(
        text_model, "--max-batch", "1", "--max-queue", "2", "--max-items", "2", "--max-wait-ms", "0"
    )
    barrier = threading.Barrier(24)

    def one(i: int) -> httpx.Response:
        barrier.wait()
        return server.post(json={"inputs": [f"text {i}"]})

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 503}, statuses
    for a in answers:
        if a.status_code == 503:
            assert (
                int(a.headers["retry-after"]) >= 1
                and "queue is full" in a.json()["error"]["message"]
            )
    assert server.metric("graft_inputs_total") == statuses.count(200)


def test_a_request_past_its_timeout_answers_504_and_is_not_computed(
    text_model: Path, serve: Any
) -> None:
    # A batch waits 2 s for company; a request may wait 0.3 s.
    server = serve(text_model, "--max-wait-ms", "2000", "--timeout", "0.3s")
    start = time.monotonic()
    answer = server.post(json={"inputs": ["slow"]})
    assert answer.status_code == 504 and "--timeout" in answer.json()["error"]["message"]
    assert time.monotonic() - start < 1.5
    time.sleep(2.5)  # the batcher's wait has passed: the abandoned input was dropped, not run
    assert server.metric("graft_inputs_total") == 0


def test_an_internal_error_is_a_500_with_an_id_and_the_trace_only_in_the_log(
    text_model: Path, serve: Any, tmp_path: Path
) -> None:
    """A model folder with a classic bug: its tokenizer gained a token that the embedding
    matrix was never resized for. A text with that token fails inside the model."""
    import shutil

    from transformers import AutoTokenizer

    broken = tmp_path / "broken"
    shutil.copytree(text_model, broken)
    tokenizer = AutoTokenizer.from_pretrained(str(broken / "tokenizer"))
    tokenizer.add_tokens(["zzqx"])
    tokenizer.save_pretrained(str(broken / "tokenizer"))
    server = serve(broken)
    answer = server.post(json={"inputs": ["a zzqx film"]})
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["id"] == answer.headers["x-request-id"] and error["id"] in error["message"]
    assert "Traceback" not in answer.text and "index" not in answer.text.lower()
    logged = server.wait_for(lambda e: e.get("event") == "internal_error", 10)
    assert logged["id"] == error["id"] and "Traceback" in logged["traceback"]
    assert server.post(json={"inputs": ["short"]}).status_code == 200  # still serving


# --------------------------------------------------------------------------- batching, readiness


def test_concurrent_requests_share_forward_passes(text_model: Path, serve: Any) -> None:
    server = serve(text_model, "--max-batch", "32", "--max-wait-ms", "300", "--precision", "fp32")
    barrier = threading.Barrier(32)

    def one(i: int) -> httpx.Response:
        barrier.wait()
        return server.post(json={"inputs": [TEXTS[i % len(TEXTS)]]})

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert all(a.status_code == 200 for a in answers)
    passes = server.metric("graft_batch_size_count")
    assert server.metric("graft_batch_size_sum") == 32
    assert passes < 32 / 4, f"{passes} forward passes for 32 concurrent requests"
    # Every request's answer is its own input's, whatever batch it shared.
    expected = expected_probabilities(text_model, TEXTS)
    for i, a in enumerate(answers):
        assert a.json()["predictions"][0]["score"] == pytest.approx(
            float(expected[i % 4].max()), abs=1e-5
        )


def test_ready_only_after_the_model_is_loaded_and_warm(text_model: Path, serve: Any) -> None:
    server = serve(text_model, wait_ready=False)
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        live = server.get("/health/live").status_code
        ready = server.get("/health/ready")
        seen.append((live, ready.status_code))
        if ready.status_code == 200:
            break
        assert ready.json() == {"status": "loading"} and ready.headers["retry-after"] == "1"
        early = server.post(json={"inputs": ["early"]})
        # A prediction before ready is a 503, unless the model turned ready in between.
        if early.status_code != 503:
            assert early.status_code == 200 and server.get("/health/ready").status_code == 200
        else:
            assert "not ready (loading)" in early.json()["error"]["message"]
        time.sleep(0.02)
    assert seen[0] == (200, 503), "ready before the model was even loaded"
    assert seen[-1] == (200, 200)
    ready_event = server.wait_for(lambda e: e.get("event") == "ready", 5)
    assert ready_event["warmup_batch"] == 32 and ready_event["warmup_ms"] > 0
    # --precision auto: bf16 only where this CPU computes it natively (a text model).
    import torch

    native = any(
        getattr(torch.cpu, check, lambda: False)()
        for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    assert ready_event["precision"] == ("bf16" if native else "fp32")


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(
    text_model: Path, serve: Any
) -> None:
    # A batch waits 2 s for company: the 24 requests are all queued before any is computed.
    server = serve(text_model, "--max-batch", "64", "--max-wait-ms", "2000")
    # 1) 24 requests accepted and waiting in the queue when SIGTERM comes.
    with ThreadPoolExecutor(24) as pool:
        pending = [pool.submit(server.post, json={"inputs": [f"text {i}"]}) for i in range(24)]
        deadline = time.monotonic() + 10
        while server.metric("graft_queue_depth") < 24:
            assert time.monotonic() < deadline, "requests never reached the queue"
        server.proc.send_signal(signal.SIGTERM)
        answers = [f.result() for f in pending]
    assert [a.status_code for a in answers] == [200] * 24
    assert server.proc.wait(60) == 0
    with pytest.raises(httpx.ConnectError):
        server.get("/health/live")


def test_sigterm_during_a_stream_of_requests_loses_none(text_model: Path, serve: Any) -> None:
    server = serve(text_model, "--max-wait-ms", "5")
    stop = threading.Event()
    results: list[int | str] = []

    def client(i: int) -> None:
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                try:
                    results.append(
                        session.post(
                            server.url + "/v1/predict", json={"inputs": [f"t{i}"]}
                        ).status_code
                    )
                except httpx.TransportError as e:  # refused once the server stops accepting
                    results.append(type(e).__name__)
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(60)
    stop.set()
    for t in threads:
        t.join(30)
    assert code == 0
    answered = [r for r in results if isinstance(r, int)]
    assert answered and set(answered) == {200}, set(results)
    logged = [e for e in server.lines() if e.get("path") == "/v1/predict"]
    # Every request the server took in was answered 200, and the client got every one of them.
    assert {e["status"] for e in logged} == {200}
    assert len(logged) == len(answered)


# --------------------------------------------------------------------------- workers, command line


def test_two_workers_serve_one_port_and_add_up_their_metrics(text_model: Path, serve: Any) -> None:
    server = serve(text_model, "--workers", "2", "--max-wait-ms", "1")
    # Readiness is per worker, and both accept on the one socket: wait until each has said so.
    deadline = time.monotonic() + 90
    while len({e.get("pid") for e in server.lines() if e.get("event") == "ready"}) < 2:
        assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
        time.sleep(0.05)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: server.post(json={"inputs": ["x", "y"]}), range(20)))
    assert all(a.status_code == 200 for a in answers)
    assert server.metric("graft_inputs_total") == 40
    assert server.stop() == 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, "serve", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_command_lines_fail_before_serving(text_model: Path, tmp_path: Path) -> None:
    cases = [
        ([str(tmp_path / "missing")], 3, "no such file"),
        ([str(tmp_path)], 3, "not a graft model folder"),
        ([str(text_model), "--max-batch", "0"], 2, "--max-batch must be positive"),
        ([str(text_model), "--max-queue", "8"], 2, "--max-queue 8 is below --max-items"),
        ([str(text_model), "--workers", "64"], 2, "cores"),
        ([str(text_model), "--max-body", "lots"], 2, "--max-body: not a size"),
        ([str(text_model), "--backend", "onnxruntime"], 2, "export it first"),
        ([str(text_model), "--host", "no.such.host.invalid"], 2, "--host"),
    ]
    for args, code, message in cases:
        done = _cli(*args, "--port", "0")
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr


def test_a_port_in_use_and_an_unloadable_model_are_one_line_errors(
    text_model: Path, tmp_path: Path
) -> None:
    import shutil
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _cli(str(text_model), "--port", str(taken.getsockname()[1]))
    assert done.returncode == 2 and "cannot listen on 127.0.0.1" in done.stderr

    broken = tmp_path / "broken"
    shutil.copytree(text_model, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    done = _cli(str(broken), "--port", "0")
    assert done.returncode == 3 and "unreadable weights" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_real_minilm_served_equals_graft_predict(serve: Any, tmp_path: Path) -> None:
    """The real MiniLM (pretrained body, a seeded head) served; the same as `graft predict`."""
    import torch
    from conftest import require_asset

    from graft.artifact import save_model
    from graft.assets import minilm_dir
    from graft.data.types import LabelMap
    from graft.models import build_backbone

    require_asset(minilm_dir)
    torch.manual_seed(0)
    backbone = build_backbone("minilm", num_classes=2, max_length=64)
    save_model(tmp_path / "minilm", backbone, LabelMap(("negative", "positive")), plan={})
    server = serve(tmp_path / "minilm", "--max-wait-ms", "20", "--precision", "fp32")
    texts = ["a moving, beautifully shot film", "two hours I will never get back", "fine"]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda t: server.post(json={"inputs": [t]}), texts))
    expected = expected_probabilities(tmp_path / "minilm", texts)
    for row, answer in zip(expected, answers, strict=True):
        prediction = answer.json()["predictions"][0]
        assert prediction["label"] == ["negative", "positive"][int(row.argmax())]
        assert prediction["score"] == pytest.approx(float(row.max()), abs=1e-5)
