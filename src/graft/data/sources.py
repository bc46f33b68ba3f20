"""Readers for the user's own data: image folders, IDX files and text tables.

Every reader returns :class:`~graft.data.types.Examples` and reports bad input as a
:class:`~graft.errors.DataError` that names the file (and the line or column where it helps).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import math
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graft.atomic import file_kind
from graft.data.images import load_image
from graft.data.types import Examples
from graft.errors import DataError, UsageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TABLE_FORMATS = ("csv", "tsv", "jsonl")
FORMATS = ("image_folder", "idx", *TABLE_FORMATS)  # what data.*.format may name
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}

_FOLDER_HINT = "expected one subfolder per class, e.g. data/cat/*.jpg and data/dog/*.jpg"
DELIMITERS = (",", ";", "\t", "|")  # what a CSV file's header is searched for
# Python's csv module refuses fields over 128 KiB by default; a review or an article is longer.
FIELD_LIMIT = 2**31 - 1


def require_file_or_folder(path: Path) -> None:
    """Refuse a data path that is neither a regular file nor a folder: a FIFO would block the
    run forever, a device such as /dev/zero would be read until memory runs out."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(
            f"{path}: is {file_kind(mode)}, not a data file or folder",
            hint="give a file or a folder",
        )


# --------------------------------------------------------------------------- image folders


def _hidden(p: Path) -> bool:
    # ".DS_Store", "._photo.jpg" (macOS resource forks with an image extension),
    # ".ipynb_checkpoints" ... are never data.
    return p.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), in a stable order.
    Symbolic links to folders are followed (data is often linked in), but a link that leads
    back to a folder on its own path (a loop) is refused, naming it."""
    out = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        here = Path(top)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        real_here = os.path.realpath(here)
        for d in dirs:
            target = os.path.realpath(here / d)
            # A link to this folder or one above it would be walked again and again.
            if (here / d).is_symlink() and os.path.commonpath([target, real_here]) == target:
                raise DataError(
                    f"{here / d}: a symbolic link back into its own folder (a loop)",
                    hint="remove the link, or point it at a folder outside this one",
                )
        out += [
            here / f
            for f in files
            if not f.startswith(".")
            and Path(f).suffix.lower() in IMAGE_EXTENSIONS
            and (here / f).is_file()
        ]
    # Sort by the relative path as a string: the same order on every filesystem.
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def read_image_folder(path: str | Path, *, validate: bool = True) -> Examples:
    """Read a folder with one subfolder per class (the class name is the subfolder's name).

    Image files are found by extension (case-insensitive, also in nested folders) and sorted,
    so the result is deterministic. With ``validate`` (the default) every image is decoded once,
    so a corrupt file is reported now, naming it, rather than in the middle of training.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"image folder not found: {root}", hint="check the path")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder", hint=_FOLDER_HINT)

    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not _hidden(p)), key=lambda p: p.name
    )
    stray = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not _hidden(p) and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not class_dirs:
        what = f"{len(stray)} image files but no" if stray else "no"
        raise DataError(f"{root}: {what} class subfolders", hint=_FOLDER_HINT)
    if stray:
        # Images beside the class folders have no label; silently skipping them would hide a
        # mistake (e.g. pointing at one class folder's parent by accident).
        raise DataError(
            f"{root}: {len(stray)} image file(s) outside any class subfolder (e.g. {stray[0]})",
            hint="move each image into the subfolder named after its class",
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"{root}: only one class subfolder ({class_dirs[0].name!r}); "
            "a classifier needs at least 2 classes",
            hint=_FOLDER_HINT,
        )

    files: list[Path] = []
    labels: list[str] = []
    for d in class_dirs:
        found = _image_files(d)
        if not found:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DataError(
                f"{d}: class folder {d.name!r} has no image files",
                hint=f"add images ({exts}) or remove the folder",
            )
        files.extend(found)
        labels.extend([d.name] * len(found))

    if validate:
        for f in files:
            load_image(f)  # raises DataError naming the file
    return Examples("image", files, labels, str(root))


# --------------------------------------------------------------------------- IDX (MNIST format)

_IDX_UBYTE = 0x08


def _read_maybe_gzip(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic (whatever its name)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}", hint="check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt or truncated gzip file ({e})", hint="download the file again"
        ) from None


def _parse_idx(path: Path, data: bytes, kind: str, ndims: tuple[int, ...]) -> np.ndarray:
    hint = "expected an MNIST-style IDX file (e.g. train-images-idx3-ubyte.gz)"
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)", hint=hint)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or ndim == 0:
        raise DataError(f"{path}: bad IDX magic number {data[:4].hex()}", hint=hint)
    if dtype_code != _IDX_UBYTE:
        raise DataError(
            f"{path}: IDX element type 0x{dtype_code:02x} not supported (only unsigned bytes)",
            hint=hint,
        )
    if ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise DataError(f"{path}: {kind} file has {ndim} dimensions, expected {want}", hint=hint)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header", hint="download the file again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if any(d == 0 for d in dims[1:]):
        raise DataError(f"{path}: IDX dimensions {dims} contain a zero", hint=hint)
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(data) - header
    if got < expected:
        raise DataError(
            f"{path}: truncated: dimensions {dims} need {expected:,} bytes of data, found {got:,}",
            hint="download the file again",
        )
    if got > expected:
        raise DataError(
            f"{path}: {got - expected:,} unexpected bytes after the data of dimensions {dims}",
            hint=hint,
        )
    # frombuffer views the bytes (read-only); one copy makes an ordinary writable array.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(
    images_path: str | Path,
    labels_path: str | Path,
    origin: str | None = None,
    *,
    label_names: Sequence[str] | None = None,
) -> Examples:
    """Read an MNIST-format IDX pair (gzipped or not): images (N, H, W[, C]) and labels (N,).

    Labels become the integer as a string ("0".."9"), or ``label_names[i]`` when given.
    """
    ipath, lpath = Path(images_path), Path(labels_path)
    images = _parse_idx(ipath, _read_maybe_gzip(ipath), "images", (3, 4))
    labels = _parse_idx(lpath, _read_maybe_gzip(lpath), "labels", (1,))
    if len(images) != len(labels):
        raise DataError(
            f"{ipath} has {len(images):,} images but {lpath} has {len(labels):,} labels",
            hint="these two files do not belong together",
        )
    if label_names is not None:
        top = int(labels.max()) if len(labels) else -1
        if top >= len(label_names):
            raise DataError(
                f"{lpath}: label {top} out of range for the {len(label_names)} class names"
            )
        table = [str(n) for n in label_names]
    else:
        table = [str(i) for i in range(256)]
    # A lookup table is much faster than str() on 60k numpy scalars.
    names = [table[i] for i in labels.tolist()]
    return Examples("image", images, names, origin or str(ipath))


# --------------------------------------------------------------------------- text tables


def table_format(path: str | Path, format: str | None = None) -> str:
    """The table format of ``path``: ``format`` if given (checked), else from the extension."""
    if format is not None:
        if format not in TABLE_FORMATS:
            raise UsageError(
                f"unknown table format {format!r}", hint=f"use one of {', '.join(TABLE_FORMATS)}"
            )
        return format
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UsageError(
            f"{path}: cannot tell the table format from the extension {suffix or '(none)'!r}",
            hint=f"name it .csv, .tsv or .jsonl, or give the format ({', '.join(TABLE_FORMATS)})",
        )
    return TABLE_SUFFIXES[suffix]


def _decode_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}", hint="check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a table file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty file", hint="expected a header line and data rows")
    nul = raw.find(b"\x00")
    if nul >= 0:
        # Text never holds NUL bytes; binaries, archives and UTF-16 files do.
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(
            f"{path}: line {line}: NUL byte: a binary file (or UTF-16), not UTF-8 text",
            hint="give a UTF-8 text file (CSV, TSV or JSON Lines); re-save it as UTF-8",
        )
    try:
        return raw.decode("utf-8-sig")  # -sig: tolerate the BOM that Excel/Notepad write
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, column {col}: not valid UTF-8 "
            f"(byte 0x{raw[e.start]:02x}; the file seems to use another encoding)",
            hint="re-save the file as UTF-8",
        ) from None


def _short(value: str, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: a message quotes the user's data, and a
    header that is really one long line of something else must not fill the terminal."""
    return (
        repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value):,} chars)"
    )


def _missing_column(path: Path, kind: str, column: str, present: Sequence[str], where: str) -> str:
    close = difflib.get_close_matches(column, list(present), n=1)
    shown = ", ".join(_short(c) for c in present[:12]) or "none"
    if len(present) > 12:
        shown += f", ... ({len(present)} columns)"
    return f"{path}{where}: no {kind} column {column!r} (columns: {shown})" + (
        f"; did you mean {close[0]!r}?" if close else ""
    )


def _label_str(value: object) -> str:
    # JSON labels may be numbers; 1 and 1.0 must name the same class.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def detect_delimiter(text: str) -> str:
    """The delimiter of a CSV file: of , ; tab and |, the one its first non-blank line (the
    header) holds most often; a comma when it holds none of them."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "a tab", ",": "a comma", ";": "a semicolon", "|": "a bar"}.get(
        delimiter, repr(delimiter)
    )


def _read_delimited(
    path: Path, text: str, delimiter: str, text_column: str, label_column: str, detected: bool
) -> tuple[list[str], list[str], list[int]]:
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    seen = f" (read as separated by {_delimiter_name(delimiter)}" + (
        ", detected from the header)" if detected else ")"
    )
    col_hint = "name the columns to use with text_column / label_column" + (
        "; if the file uses another separator, give it as delimiter" if detected else ""
    )
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)  # skip blank lines before the header
        if header is None:
            raise DataError(f"{path}: empty file")
        names = [h.strip() for h in header]
        header_line = reader.line_num
        idx = {}
        for kind, col in (("text", text_column), ("label", label_column)):
            if col not in names:
                raise DataError(
                    _missing_column(path, kind, col, names, f": line {header_line}") + seen,
                    hint=col_hint,
                )
            if names.count(col) > 1:
                raise DataError(f"{path}: line {header_line}: column {col!r} appears twice")
            idx[kind] = names.index(col)

        texts: list[str] = []
        labels: list[str] = []
        lines: list[int] = []
        prev_end = reader.line_num
        for row in reader:
            line = prev_end + 1  # where this record starts (a quoted field may span lines)
            prev_end = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(names):
                raise DataError(
                    f"{path}: line {line}: {len(row)} fields, but the header has {len(names)}",
                    hint=f"quote fields that contain the delimiter ({_delimiter_name(delimiter)})",
                )
            t, lab = row[idx["text"]], row[idx["label"]].strip()
            if not t.strip():
                raise DataError(f"{path}: line {line}: empty text in column {text_column!r}")
            if not lab:
                raise DataError(f"{path}: line {line}: empty label in column {label_column!r}")
            if lab.lower() == "nan":  # what pandas writes for a missing value
                raise DataError(
                    f"{path}: line {line}: the label in column {label_column!r} is {lab!r}, "
                    "a missing value",
                    hint="give every row its class, or drop the rows without one",
                )
            texts.append(t)
            labels.append(lab)
            lines.append(line)
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(f"{path}: line {reader.line_num}: malformed {kind}: {e}") from None
    return texts, labels, lines


def _read_jsonl(
    path: Path, text: str, text_column: str, label_column: str
) -> tuple[list[str], list[str], list[int]]:
    texts: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    hint = 'JSON Lines: one object per line, e.g. {"text": "great film", "label": "pos"}'
    # split("\n"), not splitlines(): the latter also breaks on U+2028 etc., which JSON allows
    # inside strings, and would then misreport line numbers.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            first = line.lstrip()[:1]
            extra = " (the file looks like one JSON array, not JSON Lines)" if first == "[" else ""
            raise DataError(
                f"{path}: line {line_no}, column {e.colno}: invalid JSON: {e.msg}{extra}",
                hint=hint,
            ) from None
        if not isinstance(obj, dict):
            # A whole JSON array on one line is the commonest mix-up of JSON and JSON Lines.
            extra = (
                " (the file looks like one JSON array, not JSON Lines)"
                if isinstance(obj, list)
                else ""
            )
            raise DataError(
                f"{path}: line {line_no}: expected a JSON object, got {type(obj).__name__}{extra}",
                hint=hint,
            )
        for kind, col in (("text", text_column), ("label", label_column)):
            if col not in obj:
                raise DataError(
                    _missing_column(path, kind, col, list(obj), f": line {line_no}"), hint=hint
                )
        t, lab = obj[text_column], obj[label_column]
        if not isinstance(t, str):
            raise DataError(
                f"{path}: line {line_no}: text {text_column!r} is a {type(t).__name__}, "
                "expected a string"
            )
        if not t.strip():
            raise DataError(f"{path}: line {line_no}: empty text in {text_column!r}")
        if isinstance(lab, float) and not math.isfinite(lab):  # JSON's NaN / Infinity
            raise DataError(
                f"{path}: line {line_no}: the label in {label_column!r} is {lab}, not a class",
                hint="give every row its class, or drop the rows without one",
            )
        if isinstance(lab, list):  # several labels (multi-label): kept as a JSON list
            if not all(isinstance(x, str | int) and _label_str(x) for x in lab):
                raise DataError(
                    f"{path}: line {line_no}: a label list in {label_column!r} holds an empty "
                    "or non-scalar label"
                )
            texts.append(t)
            labels.append(json.dumps([_label_str(x) for x in lab]))
            lines.append(line_no)
            continue
        if lab is None or isinstance(lab, dict) or not _label_str(lab):
            raise DataError(f"{path}: line {line_no}: empty or invalid label in {label_column!r}")
        texts.append(t)
        labels.append(_label_str(lab))
        lines.append(line_no)
    return texts, labels, lines


def read_table(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    format: str | None = None,
    delimiter: str | None = None,
) -> Examples:
    """Read labeled texts from a CSV, TSV or JSON Lines file (UTF-8, a BOM is tolerated).

    The format comes from ``format`` ("csv", "tsv", "jsonl") or the extension (.csv, .tsv,
    .jsonl/.json). CSV/TSV need a header row naming the columns; quoting follows the csv module
    (RFC 4180), fields of any length. A CSV file's delimiter is ``delimiter``, else detected
    from its header (comma, semicolon, tab or bar: Excel writes semicolons in many locales).
    Labels are strings with surrounding whitespace stripped.
    """
    p = Path(path)
    fmt = table_format(p, format)
    text = _decode_text(p)
    if fmt == "jsonl":
        texts, labels, lines = _read_jsonl(p, text, text_column, label_column)
    else:
        detected = fmt == "csv" and delimiter is None
        sep = "\t" if fmt == "tsv" else delimiter or detect_delimiter(text)
        texts, labels, lines = _read_delimited(p, text, sep, text_column, label_column, detected)
    if not texts:
        raise DataError(f"{p}: no data rows", hint="expected one labeled text per row")
    return Examples("text", texts, labels, str(p), lines)
