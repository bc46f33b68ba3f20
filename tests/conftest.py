"""Shared test set-up: offline Hugging Face, sensible threads, tiny backbones, small data helpers.

Tiny backbones are random-initialised instances of every registered backbone family, built once
per session. ``TINY_BACKBONES`` is keyed by family: a family registered without a tiny instance
here makes ``test_models.py::test_every_family_has_a_tiny_instance`` fail, so new families are
tested by the same matrix automatically.
"""

from __future__ import annotations

import csv
import os

# Set before torch is imported (its OpenMP runtime reads it once, at load). With the default
# active spin-waiting, 2 intra-op threads on a busy 2-core machine (another test run, a demo)
# made a tiny training step 40x slower here (28 s instead of 0.7 s); passive waiting does not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Never touch the network (graft imports transformers / huggingface_hub lazily, after this).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("MPLBACKEND", "Agg")

import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from graft.data.types import Examples
from graft.errors import GraftError
from graft.models import Backbone, build_backbone

# One intra-op thread: the models here are tiny (a second thread buys little on them) and one
# thread is immune to the oversubscription of a shared CI box or of pytest-xdist workers.
# Integration runs set their own threads through hardware.threads.
TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (the demo, a whole ``graft auto``) are deselected, not skipped,
    unless ``--runslow`` (``make test-all``): a skip is a failure in CI."""
    if config.getoption("--runslow"):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI (``CI=true``, which .ci/run sets) a skipped test fails: a missing tool, asset or
    package must not pass unnoticed. A failing test whose module has a ``FAILURE_NOTE`` (e.g.
    the seed that drew its kill points) shows it with the failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CI") == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and nothing may skip in CI: {reason}"
    note = getattr(getattr(item, "module", None), "FAILURE_NOTE", None)
    if report.failed and note:
        report.sections.append(("note", str(note)))


@pytest.fixture(autouse=True)
def _own_feature_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    """Each test has its own empty shared feature store (features/store.py), so that no test
    reads what another computed; the CLI and compare children inherit it."""
    monkeypatch.setenv("GRAFT_FEATURE_CACHE", str(tmp_path_factory.mktemp("features")))
    monkeypatch.delenv("GRAFT_FEATURE_CACHE_SIZE", raising=False)


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """``fit`` sets the thread count from ``hardware.threads``; keep it from leaking."""
    yield
    if torch.get_num_threads() != TEST_THREADS:
        torch.set_num_threads(TEST_THREADS)


def require_asset(locate: Any) -> Any:
    """Call an asset locator; skip the test when the asset is absent (a present but broken asset
    still fails the test further on)."""
    try:
        return locate()
    except GraftError as e:
        pytest.skip(f"offline asset not present: {e.message}")


# --------------------------------------------------------------------------- tiny backbones


@dataclass(frozen=True)
class Tiny:
    """A tiny random-init backbone: ``name`` (or the tiny BERT folder), kwargs for the builder."""

    family: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.family}-{self.name}"


TINY_BERT = "tiny-bert"  # stands for the session's saved tiny BERT folder

TINY_BACKBONES: dict[str, list[Tiny]] = {
    "timm": [
        Tiny("timm", "test_efficientnet", {"image_size": 32}),
        Tiny("timm", "test_vit", {"image_size": 32}),  # a non-CNN
    ],
    "torchvision": [
        Tiny("torchvision", "mobilenet_v3_small", {"image_size": 32}),
        Tiny("torchvision", "resnet18", {"image_size": 32}),  # conv1+bn1 stem
    ],
    "hf": [Tiny("hf", TINY_BERT, {"max_length": 16})],
}
ALL_TINY = [t for ts in TINY_BACKBONES.values() for t in ts]
NUM_CLASSES = 3


def save_tiny_bert(folder: Path, tokenizer_dir: Path, layers: int, seed: int) -> Path:
    """A hidden-32 BERT of ``layers`` layers (seeded random weights, saved as its pretrained
    ones) in ``folder``, with the tokenizer of ``tokenizer_dir`` beside it."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-32 BERT saved as a local Hugging Face folder, with the real MiniLM
    tokenizer (its 30,522-token vocabulary) saved beside it."""
    from graft.assets import minilm_dir

    tokenizer_dir = require_asset(minilm_dir)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer_dir, layers=2, seed=0)


def tiny_name(tiny: Tiny, bert_dir: Path | None) -> str:
    if tiny.name == TINY_BERT:
        assert bert_dir is not None
        return str(bert_dir)
    return tiny.name


def build_tiny(tiny: Tiny, bert_dir: Path | None, num_classes: int = NUM_CLASSES) -> Backbone:
    """A fresh random-init instance (seeded, so two builds are identical)."""
    torch.manual_seed(0)
    return build_backbone(
        tiny_name(tiny, bert_dir),
        num_classes=num_classes,
        source=tiny.family,
        pretrained=False,
        **tiny.kwargs,
    )


@pytest.fixture(scope="session", params=ALL_TINY, ids=lambda t: t.id)
def tiny(request: pytest.FixtureRequest) -> Tiny:
    return request.param


@pytest.fixture(scope="session")
def tiny_backbone(tiny: Tiny, request: pytest.FixtureRequest) -> Backbone:
    """One shared instance per tiny backbone. Tests must not change its weights."""
    bert = request.getfixturevalue("tiny_bert_dir") if tiny.family == "hf" else None
    return build_tiny(tiny, bert)


# --------------------------------------------------------------------------- small data

WORDS = "good bad great awful fine movie plot actor boring moving the a film dull".split()  # noqa: SIM905


def random_examples(
    modality: str, n: int, labels: list[str] | tuple[str, ...], seed: int = 0, size: int = 12
) -> Examples:
    """``n`` random examples with labels cycling through ``labels``: grey images of
    ``size``×``size`` (resized by the pipeline) or short texts of real words."""
    rng = np.random.default_rng(seed)
    ys = [labels[i % len(labels)] for i in range(n)]
    if modality == "image":
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        return Examples("image", images, ys, "random images")
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) for _ in range(n)]
    return Examples("text", texts, ys, "random texts")


def write_image_folder(folder: Path, n: int = 60, seed: int = 3) -> Path:
    """``n`` random grey images as PNG files in one subfolder per class (a, b, c)."""
    from PIL import Image

    ex = random_examples("image", n, ["a", "b", "c"], seed=seed)
    for i, (img, label) in enumerate(zip(ex.inputs, ex.labels, strict=True)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img)).save(folder / label / f"{i}.png")
    return folder


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_text_csv(path: Path, rows: Iterable[tuple[str, str]]) -> Path:
    """A CSV of (text, label) rows under the header ``text,label``."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def tiny_image_run_config(
    train_source: dict[str, Any], out_dir: Path | str, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A config mapping for a fast run of the random-init timm ``test_efficientnet``; each
    keyword updates that section (``train={"epochs": 2}``)."""
    config: dict[str, Any] = {
        "backbone": {"name": "test_efficientnet", "source": "timm", "pretrained": False},
        "data": {"train": train_source, "image_size": 32},
        "strategy": {"name": "full"},
        "train": {"epochs": 1, "batch_size": 16},
        "hardware": {"threads": 1},
        "output": {"dir": str(out_dir), "progress": False},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def one_batch(backbone: Backbone, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs for ``n`` random examples, made by graft's own pipeline."""
    from graft.pipeline import Loaders

    examples = random_examples(backbone.modality, n, ["a", "b", "c"], seed=seed)
    loaders = Loaders(backbone.preprocess, backbone.tokenizer, False, 0, 0)
    batch = next(iter(loaders.loader(examples, None, n, shuffle=False)))
    return batch["inputs"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """A saved tiny random-init BERT with classes neg, pos (a model folder, as fit writes)."""
    from graft.artifact import save_model
    from graft.data.types import LabelMap

    folder = tmp_path_factory.mktemp("text-model") / "model"
    backbone = build_tiny(TINY_BACKBONES["hf"][0], tiny_bert_dir, num_classes=2)
    save_model(folder, backbone, LabelMap(("neg", "pos")), plan={})
    return folder


# --------------------------------------------------------------------------- PostgreSQL


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[list[str], str | None]:
    """The command prefix that drops root privileges, and the user it runs as."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"], user
    pytest.skip("running as root with neither a postgres nor a nobody user")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    bindir = _bindir()
    if bindir is None:
        reason = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    prefix, user = _as_user()
    root = Path(tempfile.mkdtemp(prefix="graft-pg-"))
    if user is not None:
        shutil.chown(root, user)
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, cwd=root)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "graft", "--auth=trust", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        options,
        "start",
    )
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "graft", "graft")
        yield f"postgresql://graft@127.0.0.1:{port}/graft"  # the README's form: any driver
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            cwd=root,
        )
        shutil.rmtree(root, ignore_errors=True)
