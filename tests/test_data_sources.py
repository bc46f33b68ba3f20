"""Readers of the user's own data: images, image folders, IDX pairs, CSV/TSV/JSONL tables."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft.data.images as images_mod
from graft.data import load_image, read_idx, read_image_folder, read_table
from graft.errors import DataError, UsageError

# --------------------------------------------------------------------------- helpers


def png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode=mode)
    im.save(path)
    return path


def grey(value: int, size: tuple[int, int] = (4, 3)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (magic 0x0000 08 ndim, big-endian dims, data)."""
    head = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --------------------------------------------------------------------------- load_image


def test_load_grey_and_rgb_exact(tmp_path: Path) -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = load_image(png(tmp_path / "g.png", g))
    assert out.dtype == np.uint8 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, g)

    rgb = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)
    np.testing.assert_array_equal(load_image(png(tmp_path / "c.png", rgb)), rgb)


def test_load_converts_modes(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: alpha is dropped
    out = load_image(png(tmp_path / "a.png", rgba))
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [200, 0, 0]

    la = np.stack([grey(90, (2, 2)), grey(255, (2, 2))], axis=-1)
    out = load_image(png(tmp_path / "la.png", la, mode="LA"))
    assert out.shape == (2, 2, 3) and out[1, 1].tolist() == [90, 90, 90]

    one = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    one.save(tmp_path / "one.png")
    np.testing.assert_array_equal(load_image(tmp_path / "one.png"), [[0, 255]])

    sixteen = np.array([[0, 257], [65535, 25700]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    np.testing.assert_array_equal(load_image(tmp_path / "s.png"), [[0, 1], [255, 100]])

    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").tolist() == [[[10, 20, 30], [200, 100, 50]]]

    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "k.jpg")
    out = load_image(tmp_path / "k.jpg")
    assert out.shape == (2, 3, 3) and out.min() > 240  # no ink = white

    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"), [[0, 128, 255]])


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"hello, I am not an image\n", "not an image"),
    ],
)
def test_load_bad_files(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=needle) as ei:
        load_image(p)
    assert name in str(ei.value)


def test_load_truncated_png_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: a long body
    for name in ("t.png", "t.jpg"):
        p = tmp_path / name
        Image.fromarray(noisy).save(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match=r"truncated or corrupt") as ei:
            load_image(p)
        assert name in str(ei.value)


def test_load_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match=r"folder"):
        load_image(tmp_path)


def test_decompression_bomb_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = png(tmp_path / "big.png", grey(0, (20, 20)))
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 399)
    with pytest.raises(DataError, match=r"too large") as ei:
        load_image(p)
    assert "big.png" in str(ei.value)


def test_pil_bomb_warning_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL only warns between its limit and twice it; graft must refuse instead.
    p = png(tmp_path / "warn.png", grey(0, (20, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(DataError, match=r"too large"):
        load_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # now PIL raises DecompressionBombError
    with pytest.raises(DataError, match=r"too large"):
        load_image(p)


# --------------------------------------------------------------------------- image folders


def make_folder(root: Path) -> Path:
    png(root / "dog" / "b.png", grey(20))
    png(root / "dog" / "A.PNG", grey(10))  # upper-case extension counts
    png(root / "cat" / "x.png", grey(30))
    png(root / "cat" / "sub" / "y.png", grey(40))  # nested files belong to the class too
    png(root / "cat" / "._x.png", grey(0))  # macOS junk: hidden, skipped
    (root / "cat" / "notes.txt").write_text("not an image")  # other files: ignored
    png(root / ".hidden" / "z.png", grey(50))  # hidden class folder: skipped
    return root


def test_read_image_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    ex = read_image_folder(root)
    assert ex.modality == "image" and ex.origin == str(root)
    assert ex.labels == ["cat", "cat", "dog", "dog"]
    assert [p.relative_to(root).as_posix() for p in ex.inputs] == [  # type: ignore[union-attr]
        "cat/sub/y.png",
        "cat/x.png",
        "dog/A.PNG",
        "dog/b.png",
    ]
    assert [int(load_image(p)[0, 0]) for p in ex.inputs] == [40, 30, 10, 20]  # type: ignore[arg-type]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found") as ei:
        read_image_folder(tmp_path / "missing")
    assert "missing" in str(ei.value)

    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match=r"not a folder"):
        read_image_folder(f)

    flat = tmp_path / "flat"
    png(flat / "a.png", grey(1))
    with pytest.raises(DataError, match=r"1 image files but no class subfolders"):
        read_image_folder(flat)

    one = tmp_path / "one"
    png(one / "cat" / "a.png", grey(1))
    with pytest.raises(DataError, match=r"only one class subfolder .'cat'"):
        read_image_folder(one)

    stray = tmp_path / "stray"
    png(stray / "cat" / "a.png", grey(1))
    png(stray / "dog" / "a.png", grey(1))
    png(stray / "loose.png", grey(1))
    with pytest.raises(DataError, match=r"outside any class subfolder .e.g. loose.png"):
        read_image_folder(stray)

    empty = tmp_path / "empty"
    png(empty / "cat" / "a.png", grey(1))
    (empty / "dog").mkdir()
    (empty / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder 'dog' has no image files"):
        read_image_folder(empty)


def test_image_folder_reports_corrupt_image(tmp_path: Path) -> None:
    root = tmp_path / "d"
    png(root / "cat" / "a.png", grey(1))
    png(root / "dog" / "a.png", grey(1))
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError) as ei:
        read_image_folder(root)
    assert "broken.jpg" in str(ei.value)
    # Without validation the folder reads (the error would come later, at decode time).
    assert len(read_image_folder(root, validate=False)) == 3


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx(tmp_path: Path, gz: bool) -> None:
    imgs = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4)
    labs = np.array([2, 0, 9], dtype=np.uint8)
    # The gzip magic is sniffed, not the name: a gzipped file without .gz still reads.
    ip = write(tmp_path / "imgs.idx", idx_bytes(imgs), gz)
    lp = write(tmp_path / "labs.idx", idx_bytes(labs), gz)
    ex = read_idx(ip, lp, "demo")
    assert ex.origin == "demo" and ex.modality == "image"
    assert isinstance(ex.inputs, np.ndarray) and ex.inputs.flags.writeable
    np.testing.assert_array_equal(ex.inputs, imgs)
    assert ex.labels == ["2", "0", "9"]

    names = [f"c{i}" for i in range(10)]
    assert read_idx(ip, lp, label_names=names).labels == ["c2", "c0", "c9"]
    with pytest.raises(DataError, match=r"label 9 out of range"):
        read_idx(ip, lp, label_names=names[:5])


def test_read_idx_errors(tmp_path: Path) -> None:
    imgs = np.zeros((3, 2, 2), dtype=np.uint8)
    good_i = write(tmp_path / "i.idx", idx_bytes(imgs))
    good_l = write(tmp_path / "l.idx", idx_bytes(np.zeros(3, dtype=np.uint8)))

    def check(ip: Path, lp: Path, needle: str, name: str) -> None:
        with pytest.raises(DataError, match=needle) as ei:
            read_idx(ip, lp)
        assert name in str(ei.value)

    bad_magic = write(tmp_path / "magic.idx", b"\x12\x34" + idx_bytes(imgs)[2:])
    check(bad_magic, good_l, "bad IDX magic", "magic.idx")
    floats = write(tmp_path / "float.idx", b"\x00\x00\x0d\x01" + struct.pack(">I", 0))
    check(good_i, floats, "not supported", "float.idx")
    check(good_l, good_l, "1 dimensions, expected 3 or 4", "l.idx")  # labels given as images
    check(good_i, good_i, "3 dimensions, expected 1", "i.idx")
    trunc = write(tmp_path / "trunc.idx", idx_bytes(imgs)[:-5])
    check(trunc, good_l, "truncated", "trunc.idx")
    short_header = write(tmp_path / "hdr.idx", idx_bytes(imgs)[:9])
    check(short_header, good_l, "truncated IDX header", "hdr.idx")
    extra = write(tmp_path / "extra.idx", idx_bytes(imgs) + b"\x00\x00")
    check(extra, good_l, "2 unexpected bytes", "extra.idx")
    tiny = write(tmp_path / "tiny.idx", b"\x00")
    check(tiny, good_l, "too short", "tiny.idx")
    four = write(tmp_path / "four.idx", idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"3 images but .*four.idx has 4 labels"):
        read_idx(good_i, four)
    broken_gz = write(tmp_path / "broken.gz", gzip.compress(idx_bytes(imgs))[:-10])
    check(broken_gz, good_l, "corrupt or truncated gzip", "broken.gz")
    check(tmp_path / "absent.gz", good_l, "not found", "absent.gz")


# --------------------------------------------------------------------------- tables


def test_read_csv_quoting_bom_and_strip(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    body = 'id,text,label\n1,"hello, world",pos\n2,"two\nlines ""quoted""", neg \n\n3,plain,pos\n'
    p.write_bytes(b"\xef\xbb\xbf" + body.encode())
    ex = read_table(p)
    assert ex.modality == "text" and ex.origin == str(p)
    assert ex.inputs == ["hello, world", 'two\nlines "quoted"', "plain"]
    assert ex.labels == ["pos", "neg", "pos"]


def test_read_tsv_jsonl_and_custom_columns(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text('sentence\tsentiment\nit\'s "fine", really\t1\nbad\t0\n', encoding="utf-8")
    ex = read_table(tsv, text_column="sentence", label_column="sentiment")
    assert ex.inputs == ['it\'s "fine", really', "bad"] and ex.labels == ["1", "0"]

    jl = tmp_path / "t.jsonl"
    rows = [
        {"text": "héllo ✓", "label": 1},
        {"text": "b", "label": 1.0},
        {"text": "c", "label": "x"},
    ]
    jl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    ex = read_table(jl)
    assert ex.inputs == ["héllo ✓", "b", "c"] and ex.labels == ["1", "1", "x"]

    # format overrides the extension
    odd = tmp_path / "data.txt"
    odd.write_text("text,label\na,b\nc,d\n")
    assert read_table(odd, format="csv").labels == ["b", "d"]


def _table_error(tmp_path: Path, name: str, content: str | bytes, **kw: str) -> str:
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    else:
        p.write_bytes(content)
    with pytest.raises(DataError) as ei:
        read_table(p, **kw)
    msg = str(ei.value)
    assert name in msg
    return msg


def test_table_errors_name_file_line_column(tmp_path: Path) -> None:
    msg = _table_error(tmp_path, "a.csv", "txt,label\nx,y\n")
    assert "no text column 'text'" in msg and "'txt'" in msg and "'label'" in msg
    assert "did you mean 'txt'" in msg

    msg = _table_error(tmp_path, "b.csv", "text,label\nx,y\nx,y,z\n")
    assert "line 3: 3 fields, but the header has 2" in msg
    # A quoted field spanning lines must not throw the line count off.
    msg = _table_error(tmp_path, "c.csv", 'text,label\n"multi\nline",a\nonly-one-field\n')
    assert "line 4: 1 fields" in msg

    assert "line 3: empty text" in _table_error(tmp_path, "d.csv", "text,label\na,b\n  ,c\n")
    assert "line 2: empty label" in _table_error(tmp_path, "e.csv", "text,label\na, \n")
    assert "empty file" in _table_error(tmp_path, "f.csv", "")
    assert "empty file" in _table_error(tmp_path, "f2.csv", "\n  \n")
    assert "no data rows" in _table_error(tmp_path, "g.csv", "text,label\n")

    msg = _table_error(tmp_path, "h.csv", "text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    assert "line 3, column 4: not valid UTF-8" in msg and "0xe9" in msg

    msg = _table_error(tmp_path, "i.csv", "text,label\nok,a\n".encode("utf-16"))
    assert "NUL byte" in msg
    assert "binary" in _table_error(tmp_path, "j.csv", b"PK\x03\x04\x00\x00garbage")

    msg = _table_error(tmp_path, "k.jsonl", '{"text": "a", "label": "b"}\n{"text": "a", \n')
    assert "line 2, column" in msg and "invalid JSON" in msg
    msg = _table_error(tmp_path, "l.jsonl", '{"text": "a", "label": "b"}\n[1, 2]\n')
    assert "line 2: expected a JSON object, got list" in msg
    msg = _table_error(tmp_path, "m.jsonl", '{"text": "a", "lbl": "b"}\n')
    assert "line 1: no label column 'label'" in msg and "'lbl'" in msg
    assert "line 1: empty text" in _table_error(tmp_path, "n.jsonl", '{"text":"","label":"b"}')
    assert "line 1: empty or invalid label" in _table_error(
        tmp_path, "o.jsonl", '{"text":"a","label":null}'
    )
    assert "is a int" in _table_error(tmp_path, "p.jsonl", '{"text": 5, "label": "b"}')
    assert "one JSON array" in _table_error(tmp_path, "q.json", '[{"text": "a", "label": "b"},')
    msg = _table_error(tmp_path, "r.csv", "text,text,label\na,b,c\n")
    assert "appears twice" in msg


def test_table_usage_errors(tmp_path: Path) -> None:
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    with pytest.raises(UsageError, match=r"cannot tell the table format"):
        read_table(p)
    with pytest.raises(UsageError, match=r"unknown table format 'xml'"):
        read_table(p, format="xml")
    with pytest.raises(DataError, match=r"not found"):
        read_table(tmp_path / "none.csv")


def test_symlinked_folders_are_followed_and_a_loop_is_refused(tmp_path: Path) -> None:
    """Data is often linked in: a class folder that is a link, and a link inside one, are read.
    A link back up to a folder on its own path would be walked forever: refused, named."""
    elsewhere = tmp_path / "elsewhere"
    png(elsewhere / "dogs" / "d0.png", grey(10))
    png(elsewhere / "more" / "c9.png", grey(30))
    root = tmp_path / "data"
    png(root / "cat" / "c0.png", grey(20))
    (root / "dog").symlink_to(elsewhere / "dogs")  # a whole class folder linked in
    (root / "cat" / "extra").symlink_to(elsewhere / "more")  # a linked subfolder
    ex = read_image_folder(root)
    names = sorted(Path(p).relative_to(root).as_posix() for p in ex.inputs)
    assert names == ["cat/c0.png", "cat/extra/c9.png", "dog/d0.png"]
    assert sorted(ex.labels) == ["cat", "cat", "dog"]
    (root / "cat" / "loop").symlink_to(root)
    with pytest.raises(DataError, match=r"cat/loop: a symbolic link back into its own folder"):
        read_image_folder(root)
