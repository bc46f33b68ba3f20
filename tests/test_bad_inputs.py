"""The corpus of bad inputs (``tests/fixtures/bad/cases.yaml``): every malformed file, config,
name or override ends with its promised exit code and a message naming the file, line or field,
without a traceback, within seconds, and with the working directory (output directory, input
files, saved model) left exactly as it was.

Cases run in-process through :func:`graft.cli.main` (fast); those marked ``subprocess: true`` also
run through the installed ``graft`` executable, which proves the real exit status and stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import TINY_BACKBONES, build_tiny

from graft.artifact import save_model
from graft.cli import main
from graft.data.types import LabelMap

BAD = Path(__file__).parent / "fixtures" / "bad"
#: A guard against hangs (a bomb decoded, a billion-laughs YAML expanded), not a timing test:
#: every case takes well under a second or two on an idle machine.
TIME_LIMIT_S = 20.0
#: "A short message": longer stderr means a dump (a whole file, a repr of a huge value).
DEFAULT_MAX_MESSAGE_CHARS = 1200


@dataclass(frozen=True)
class Case:
    """One entry of cases.yaml."""

    id: str
    category: str
    argv: list[str]
    exit: int
    message: list[str]
    generate: str | None = None
    subprocess: bool = False
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS


def load_cases() -> list[Case]:
    raw = yaml.safe_load((BAD / "cases.yaml").read_text(encoding="utf-8"))["cases"]
    return [Case(**c) for c in raw]


CASES = load_cases()


# --------------------------------------------------------------------------- generated inputs


def _long_csv_field(folder: Path) -> Path:
    """A valid CSV whose line 3 holds a 5 MB review: far above the csv module's default limit
    of 131,072 characters, and too large to commit."""
    path = folder / "long-field.csv"
    rows = [f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    long = '"' + "a long review, " * 350_000 + '",neg'
    path.write_text("\n".join(["text,label", rows[0], long, *rows[1:]]) + "\n", encoding="utf-8")
    return path


def _long_jsonl_line(folder: Path) -> Path:
    """JSON Lines whose line 2 is one megabyte long and broken at its very end."""
    path = folder / "long-line.jsonl"
    ok = json.dumps({"text": "fine", "label": "pos"})
    path.write_text(ok + '\n{"text": "' + "x" * 1_000_000 + '", "label": neg}\n', encoding="utf-8")
    return path


def _fifo(folder: Path) -> Path:
    """A named pipe where a data file or a config is expected: reading it would block."""
    path = folder / "pipe.csv"
    os.mkfifo(path)
    return path


def _looping_folder(folder: Path) -> Path:
    """An image folder whose class folder holds a symbolic link back up to the root."""
    root = folder / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        shutil.copy(BAD / "good" / "images" / cls / "0.png", root / cls / "0.png")
    (root / "cat" / "again").symlink_to("..")
    return root


GENERATORS = {
    "long_csv_field": _long_csv_field,
    "long_jsonl_line": _long_jsonl_line,
    "fifo": _fifo,
    "looping_folder": _looping_folder,
}


# --------------------------------------------------------------------------- saved models


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random-init timm model with classes cat, dog, owl."""
    folder = tmp_path_factory.mktemp("image-model") / "model"
    backbone = build_tiny(TINY_BACKBONES["timm"][0], None)
    save_model(folder, backbone, LabelMap(("cat", "dog", "owl")), plan={})
    return folder


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a digest of its contents."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link to {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:  # a FIFO or another special file: its kind, never its contents (reading blocks)
            out[rel] = f"special {stat.S_IFMT(p.lstat().st_mode):o}"
    return out


@dataclass
class Prepared:
    argv: list[str]
    message: list[str]
    watched: list[Path]


def prepare(case: Case, work: Path, request: pytest.FixtureRequest) -> Prepared:
    """Copy the corpus into ``work`` as bad/, generate inputs, fill in the placeholders."""
    shutil.copytree(BAD, work / "bad", ignore=shutil.ignore_patterns("cases.yaml", "*.py"))
    values: dict[str, str] = {}
    watched = [work]
    if case.generate:
        gen_dir = work / "gen"
        gen_dir.mkdir()
        values["gen"] = GENERATORS[case.generate](gen_dir).relative_to(work).as_posix()
    joined = " ".join(case.argv)
    for placeholder, fixture in (("model", "image_model"), ("text_model", "text_model")):
        if "{" + placeholder + "}" in joined:
            folder = request.getfixturevalue(fixture)
            values[placeholder] = str(folder)
            watched.append(folder)

    def fill(s: str) -> str:
        return s.format(**values) if "{" in s else s

    return Prepared([fill(a) for a in case.argv], [fill(m) for m in case.message], watched)


def check_outcome(
    case: Case, message: list[str], code: int, out: str, err: str, elapsed: float, limit: float
) -> None:
    """The promises of one case: exit code, message fragments, no traceback, a short message."""
    assert code == case.exit, f"exit {code}, expected {case.exit}; stderr:\n{err}"
    assert "Traceback" not in out + err, err
    assert elapsed < limit, f"took {elapsed:.1f} s"
    if case.exit == 0:
        shown = out
        assert err.count("error: ") == 0, err
    else:
        shown = err
        assert err.count("error: ") == 1, err  # one message (after the run log's lines, if any)
        assert len(err) <= case.max_message_chars, f"{len(err)} characters:\n{err[:3000]}"
    for fragment in message:
        assert fragment in shown, f"{fragment!r} not in:\n{shown}"


# --------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prep = prepare(case, work, request)
    monkeypatch.chdir(work)
    before = [snapshot(w) for w in prep.watched]
    capsys.readouterr()  # drop what building the saved models printed

    started = time.perf_counter()
    code = main(prep.argv)
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()

    check_outcome(case, prep.message, code, captured.out, captured.err, elapsed, TIME_LIMIT_S)
    assert not (work / "out").exists(), "the output directory was created"
    assert [snapshot(w) for w in prep.watched] == before, "files were changed"


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_bad_input_real_process(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The installed ``graft`` command: the real exit status, and stderr without a traceback."""
    graft = Path(sys.executable).parent / "graft"
    if not graft.is_file():
        pytest.skip(f"no graft executable beside {sys.executable}")
    work = tmp_path / "work"
    work.mkdir()
    prep = prepare(case, work, request)
    before = [snapshot(w) for w in prep.watched]
    started = time.perf_counter()
    proc = subprocess.run(
        [str(graft), *prep.argv],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    # Interpreter start-up and importing torch count here too: a wider bound.
    check_outcome(
        case, prep.message, proc.returncode, proc.stdout, proc.stderr, elapsed, 3 * TIME_LIMIT_S
    )
    assert not (work / "out").exists()
    assert [snapshot(w) for w in prep.watched] == before


# --------------------------------------------------------------------------- the corpus itself


def test_corpus_shape() -> None:
    """At least 40 failing cases over every category the issue names; committed files stay small;
    every committed input is used by some case."""
    failing = [c for c in CASES if c.exit != 0]
    assert len(failing) >= 40
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    categories = Counter(c.category for c in CASES)
    assert set(categories) == {
        "truncated and corrupt files",
        "decompression bombs",
        "odd image modes",
        "empty files",
        "binary garbage as CSV",
        "wrong encodings",
        "missing columns",
        "ragged rows",
        "empty classes",
        "a single class",
        "labels unseen in training",
        "very long lines",
        "YAML type errors and unknown keys",
        "unknown names",
        "malformed overrides",
        "special paths",
        "unusable output locations",
        "missing labels and dialects",
        "silent coercions",
        "misleading messages",
    }
    assert all(c.exit in (0, 2, 3, 5) for c in CASES)
    assert all(c.generate is None or c.generate in GENERATORS for c in CASES)
    files = [
        p for p in BAD.rglob("*") if p.is_file() and p.suffix != ".py" and p != BAD / "cases.yaml"
    ]
    big = [p.name for p in files if p.stat().st_size > 8192]
    assert not big, f"keep the corpus small: {big}"
    text = (BAD / "cases.yaml").read_text(encoding="utf-8")
    inputs = [p for p in files if p.parts[len(BAD.parts)] in {"images", "tables", "idx", "configs"}]
    unused = [p.relative_to(BAD).as_posix() for p in inputs if p.name not in text]
    assert not unused, f"committed inputs no case uses: {unused}"


@pytest.mark.parametrize("config", ["image.yaml", "text.yaml"])
def test_the_base_configs_and_good_data_are_valid(
    config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the configs the cases start from, and the good data beside the bad, load and
    split cleanly, so each case fails because of its one bad input."""
    from graft.config import load_config
    from graft.prepare import load_splits

    shutil.copytree(BAD, tmp_path / "bad")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(f"bad/configs/{config}")
    splits = load_splits(cfg.data)
    assert len(splits.label_map) == 2 and len(splits.train) > 0
    assert cfg.output.dir == "out"
