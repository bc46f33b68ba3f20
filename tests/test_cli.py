"""``graft`` in-process: every bad input ends with its exit code (2 usage, 3 data), a one-line
message naming the file or field, no traceback, and no run directory left behind."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_BACKBONES, build_tiny, tiny_image_run_config, write_yaml
from PIL import Image

from graft.artifact import save_model
from graft.cli import main
from graft.data.images import MAX_IMAGE_PIXELS
from graft.data.types import LabelMap


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with an output folder that already holds something."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("earlier work")
    return tmp_path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- data makers


def image_folder(root: Path, counts: dict[str, int], size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def table(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def sentiment_rows(n: int = 6) -> list[str]:
    return [f"text number {i},{'pos' if i % 2 else 'neg'}" for i in range(n)]


def bomb_png(path: Path, side: int = 8000) -> Path:
    """A valid 1-bit PNG of side×side pixels (64 megapixels), about 8 kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * side, 9))
        + chunk(b"IEND", b"")
    )
    return path


def config_file(ws: Path, train: dict[str, Any], **sections: Any) -> str:
    data = tiny_image_run_config(train, "runs", **sections)
    return str(write_yaml(ws / "run.yaml", data))


def images(ws: Path) -> dict[str, Any]:
    return {"path": str(image_folder(ws / "imgs", {"cat": 10, "dog": 10}))}


# --------------------------------------------------------------------------- bad inputs

Case = Callable[[Path], list[str]]


def _missing_config(ws: Path) -> list[str]:
    return ["fit", str(ws / "nope.yaml")]


def _unknown_backbone(ws: Path) -> list[str]:
    return [
        "fit",
        config_file(ws, images(ws)),
        "backbone.name=no_such_net_xyz",
        "backbone.source=auto",
    ]


def _unknown_timm_model(ws: Path) -> list[str]:
    return ["fit", config_file(ws, images(ws)), "backbone.name=no_such_net_xyz"]


def _unknown_dataset(ws: Path) -> list[str]:
    return ["fit", config_file(ws, {"dataset": "no_such_set"})]


def _wrong_type(ws: Path) -> list[str]:
    return ["fit", config_file(ws, images(ws)), "train.epochs=many"]


def _unknown_key(ws: Path) -> list[str]:
    return ["fit", config_file(ws, images(ws)), "train.epochz=2"]


def _unknown_key_in_file(ws: Path) -> list[str]:
    return ["fit", config_file(ws, images(ws), optim={"learning_rate": 0.1})]


def _unknown_strategy(ws: Path) -> list[str]:
    return ["fit", config_file(ws, images(ws)), "strategy.name=fulll"]


def _unknown_strategy_param(ws: Path) -> list[str]:
    return ["fit", config_file(ws, images(ws)), "strategy.warp=9"]


def _text_data_for_an_image_backbone(ws: Path) -> list[str]:
    csv = table(ws / "train.csv", "text,label", sentiment_rows(20))
    return ["fit", config_file(ws, {"path": str(csv)})]


def _missing_data_file(ws: Path) -> list[str]:
    return ["fit", config_file(ws, {"path": str(ws / "missing.csv")})]


def _empty_class_folder(ws: Path) -> list[str]:
    root = image_folder(ws / "imgs", {"cat": 3})
    (root / "dog").mkdir()
    return ["fit", config_file(ws, {"path": str(root)})]


def _corrupt_image(ws: Path) -> list[str]:
    root = image_folder(ws / "imgs", {"cat": 3, "dog": 3})
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    return ["fit", config_file(ws, {"path": str(root)})]


def _truncated_image(ws: Path) -> list[str]:
    root = image_folder(ws / "imgs", {"cat": 3, "dog": 3}, size=64)
    whole = (root / "dog" / "1.png").read_bytes()
    (root / "dog" / "1.png").write_bytes(whole[: len(whole) // 2])
    return ["fit", config_file(ws, {"path": str(root)})]


def _csv_without_column(ws: Path) -> list[str]:
    csv = table(ws / "train.csv", "sentence,label", sentiment_rows())
    return ["fit", config_file(ws, {"path": str(csv)})]


def _test_labels_never_seen(ws: Path) -> list[str]:
    train = table(ws / "train.csv", "text,label", sentiment_rows(20))
    test = table(ws / "test.csv", "text,label", ["fine,pos", "meh,neutral"])
    return ["fit", config_file(ws, {"path": str(train)}), f"data.test.path={test}"]


def _decompression_bomb(ws: Path) -> list[str]:
    root = image_folder(ws / "imgs", {"cat": 3, "dog": 3})
    bomb_png(root / "dog" / "bomb.png")
    return ["fit", config_file(ws, {"path": str(root)})]


def _predict_missing_model(ws: Path) -> list[str]:
    return ["predict", str(ws / "nowhere"), "some text"]


def _eval_missing_model(ws: Path) -> list[str]:
    return ["eval", str(ws / "nowhere"), "--dataset", "digits"]


def _no_command(ws: Path) -> list[str]:
    return []


def _unknown_option(ws: Path) -> list[str]:
    return ["fit", "--bogus", str(ws / "run.yaml")]


CASES: dict[str, tuple[Case, int, Callable[[Path], list[str]]]] = {
    # id: (argv maker, exit code, what stderr must name)
    "missing-config": (_missing_config, 2, lambda ws: [str(ws / "nope.yaml"), "not found"]),
    "unknown-backbone": (_unknown_backbone, 2, lambda ws: ["backbone.name", "no_such_net_xyz"]),
    "unknown-timm-model": (_unknown_timm_model, 2, lambda ws: ["backbone.name", "no_such_net"]),
    "unknown-dataset": (_unknown_dataset, 2, lambda ws: ["no_such_set", "unknown dataset"]),
    "wrong-typed-field": (_wrong_type, 2, lambda ws: ["train.epochs", "'many'"]),
    "unknown-key": (_unknown_key, 2, lambda ws: ["train.epochz", "unknown field"]),
    "unknown-key-in-file": (
        _unknown_key_in_file,
        2,
        lambda ws: [str(ws / "run.yaml"), "optim.learning_rate", "unknown field"],
    ),
    "unknown-strategy": (_unknown_strategy, 2, lambda ws: ["strategy.name", "fulll"]),
    "unknown-strategy-param": (_unknown_strategy_param, 2, lambda ws: ["strategy.warp"]),
    "text-data-image-backbone": (
        _text_data_for_an_image_backbone,
        2,
        lambda ws: ["backbone.name", "image", "text"],
    ),
    "missing-data-file": (_missing_data_file, 3, lambda ws: [str(ws / "missing.csv")]),
    "empty-class-folder": (_empty_class_folder, 3, lambda ws: [str(ws / "imgs" / "dog")]),
    "corrupt-image": (_corrupt_image, 3, lambda ws: [str(ws / "imgs" / "dog" / "bad.png")]),
    "truncated-image": (_truncated_image, 3, lambda ws: [str(ws / "imgs" / "dog" / "1.png")]),
    "csv-without-column": (
        _csv_without_column,
        3,
        lambda ws: [str(ws / "train.csv"), "'text'"],
    ),
    "test-labels-never-seen": (
        _test_labels_never_seen,
        3,
        lambda ws: [str(ws / "test.csv"), "'neutral'", "never seen"],
    ),
    "decompression-bomb": (
        _decompression_bomb,
        3,
        lambda ws: [
            str(ws / "imgs" / "dog" / "bomb.png"),
            "8000x8000",
            f"limit {MAX_IMAGE_PIXELS:,}",
        ],
    ),
    "predict-missing-model": (_predict_missing_model, 3, lambda ws: [str(ws / "nowhere")]),
    "eval-missing-model": (_eval_missing_model, 3, lambda ws: [str(ws / "nowhere")]),
    "no-command": (_no_command, 2, lambda ws: []),
    "unknown-option": (_unknown_option, 2, lambda ws: ["--bogus"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_argv, expected_code, names = CASES[case]
    argv = make_argv(ws)
    before = sorted(p.name for p in (ws / "runs").iterdir())
    code, out, err = run(argv, capsys)
    assert code == expected_code, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err + out
    if argv:
        assert err.count("error: ") == 1, err
    else:
        assert "usage: graft" in out + err  # no command: the help
    for word in names(ws):
        assert word in err, f"{word!r} not in: {err}"
    assert sorted(p.name for p in (ws / "runs").iterdir()) == before == ["keep.txt"]
    assert (ws / "runs" / "keep.txt").read_text() == "earlier work"
    assert not any(p.is_dir() for p in ws.iterdir() if p.name not in {"runs", "imgs"})


def test_bomb_trips_grafts_own_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bomb is the cheap kind (small on disk), below PIL's own limit: only graft's catches it;
    and that limit is the one in graft.data.images."""
    import graft.data.images as images_mod
    from graft.data import load_image
    from graft.errors import DataError

    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 50_000
    with Image.open(path) as im:
        assert im.size == (8000, 8000)
    assert MAX_IMAGE_PIXELS < 8000 * 8000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="too large"):
        load_image(path)
    small = image_folder(tmp_path / "small", {"a": 1}) / "a" / "0.png"
    assert load_image(small).shape == (12, 12)
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="limit 100"):
        load_image(small)


# --------------------------------------------------------------------------- working commands


@pytest.fixture
def saved_image_model(ws: Path) -> Path:
    folder = ws / "model"
    backbone = build_tiny(TINY_BACKBONES["timm"][0], None)
    save_model(folder, backbone, LabelMap(("cat", "dog", "owl")), plan={})
    return folder


def test_predict_json(
    saved_image_model: Path, ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = image_folder(ws / "imgs", {"cat": 2})
    files = sorted(str(p) for p in (root / "cat").iterdir())
    code, out, err = run(["predict", str(saved_image_model), *files, "--json"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["input"] for r in rows] == files
    for r in rows:
        assert r["label"] in {"cat", "dog", "owl"}
        assert list(r["probabilities"]) == ["cat", "dog", "owl"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)


def test_predict_corrupt_input_image(
    saved_image_model: Path, ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ws / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    code, out, err = run(["predict", str(saved_image_model), str(bad)], capsys)
    assert code == 3 and str(bad) in err and "Traceback" not in err and out == ""


def test_eval_json_and_unseen_labels(
    saved_image_model: Path, ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = image_folder(ws / "imgs", {"cat": 3, "owl": 3})
    code, out, err = run(["eval", str(saved_image_model), "--path", str(root), "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    image_folder(ws / "imgs", {"yak": 2})
    code, out, err = run(["eval", str(saved_image_model), "--path", str(root)], capsys)
    assert code == 3 and "'yak'" in err and "never seen" in err and "Traceback" not in err


def test_fit_prints_the_run_and_its_accuracy(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(ws / "imgs", {"cat": 10, "dog": 10})
    config = config_file(ws, {"path": str(root)})
    code, out, err = run(["fit", config, "data.test_fraction=0.2", "--quiet"], capsys)
    assert code == 0, err
    run_dir_text, _, acc = out.strip().partition("\ttest accuracy ")
    run_dir = Path(run_dir_text)
    assert run_dir.parent == Path("runs") and (ws / run_dir / "results.json").is_file()
    assert 0.0 <= float(acc) <= 1.0
    assert sorted(p.name for p in (ws / "runs").iterdir()) == sorted(["keep.txt", run_dir.name])


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    from graft.models import families
    from graft.strategies import strategies

    code, out, _ = run(["list", "strategies"], capsys)
    assert code == 0 and {line.split()[0] for line in out.splitlines()} == set(strategies())
    code, out, _ = run(["list", "backbones"], capsys)
    assert code == 0 and all(f in out for f in families())


def test_overrides_may_follow_options(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(ws / "imgs", {"cat": 10, "dog": 10})
    config = config_file(ws, {"path": str(root)})
    code, out, err = run(["fit", config, "--quiet", "train.epochs=2"], capsys)
    assert code == 0, err
    run_dir = ws / out.split("\t")[0]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2  # the override counted
    code, _, err = run(["fit", config, "--quiet", "stray"], capsys)
    assert code == 2 and "stray" in err
