"""What a ``POST /v1/predict`` body may hold, checked before anything is queued.

Text models take JSON: ``{"inputs": ["a text", …], "top_k": 2}``. Image models take the same
JSON with base64 images (``"iVBOR…"`` or a ``data:image/png;base64,…`` URL), or a multipart
form with one or more ``files`` parts (and an optional ``top_k`` field). Every way a body can
be wrong is an :class:`InvalidInput` (answered 422) or :class:`UnsupportedMedia` (415) whose
message says what was wrong and where.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

#: The fields a JSON body may have.
JSON_FIELDS = ("inputs", "top_k")


class InvalidInput(Exception):
    """A body the server cannot use; the message is the client's to read."""


class UnsupportedMedia(Exception):
    """A content type this model does not take."""


@dataclass(frozen=True)
class Limits:
    max_items: int
    max_text_chars: int
    labels: int  # the model's number of classes: the largest top_k


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request: texts, or encoded images (bytes) still to be decoded."""

    items: list[Any]
    top_k: int


def media_type(content_type: str | None) -> str:
    """``application/json`` of ``application/json; charset=utf-8``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_json(body: bytes, modality: str, limits: Limits) -> ParsedRequest:
    """A JSON body → texts (text models) or image bytes (image models)."""
    try:
        text = body.decode("utf-8")  # JSON is UTF-8 (RFC 8259); json.loads would guess
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the body is not UTF-8 text (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"the body is not valid JSON ({e.msg} at position {e.pos})") from None
    except RecursionError:
        raise InvalidInput("the body is nested too deeply to be a request") from None
    if not isinstance(data, dict):
        raise InvalidInput(
            f'the body must be a JSON object like {{"inputs": [...]}}, not {_kind(data)}'
        )
    unknown = sorted(set(data) - set(JSON_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}: a request has {' and '.join(JSON_FIELDS)}"
        )
    if "inputs" not in data:
        raise InvalidInput('the field "inputs" is missing')
    inputs = data["inputs"]
    if not isinstance(inputs, list):
        raise InvalidInput(f'"inputs" must be a list, not {_kind(inputs)}')
    _check_count(len(inputs), limits)
    top_k = parse_top_k(data.get("top_k"), limits)
    if modality == "text":
        return ParsedRequest([_text(i, x, limits) for i, x in enumerate(inputs)], top_k)
    return ParsedRequest([_base64_image(i, x) for i, x in enumerate(inputs)], top_k)


def check_files(count: int, limits: Limits) -> None:
    """The number of uploaded files of a multipart request."""
    if count == 0:
        raise InvalidInput('no image: send one or more files in "files" parts')
    _check_count(count, limits)


def parse_top_k(value: Any, limits: Limits) -> int:
    """``top_k``: how many of the most probable labels to return (default: up to 5)."""
    if value is None:
        return min(5, limits.labels)
    if isinstance(value, str) and value.strip().isdigit():  # a multipart form field
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f'"top_k" must be a whole number, not {_kind(value)}')
    if not 1 <= value <= limits.labels:
        raise InvalidInput(f'"top_k" must be from 1 to {limits.labels} (the labels), not {value}')
    return value


def _check_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise InvalidInput('"inputs" is empty: give at least one input')
    if count > limits.max_items:
        raise InvalidInput(
            f"{count} inputs in one request; the limit is {limits.max_items} (--max-items)"
        )


def _text(index: int, value: Any, limits: Limits) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"inputs[{index}] must be a text, not {_kind(value)}")
    if not value.strip():
        raise InvalidInput(f"inputs[{index}] is empty: give a text to classify")
    if len(value) > limits.max_text_chars:
        raise InvalidInput(
            f"inputs[{index}] has {len(value):,} characters; the limit is "
            f"{limits.max_text_chars:,} (--max-text-chars)"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800": a lone surrogate, which no tokenizer takes
        raise InvalidInput(f"inputs[{index}] is not valid Unicode (a lone surrogate)") from None
    return value


def _base64_image(index: int, value: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(
            f"inputs[{index}] must be a base64-encoded image (a string), not {_kind(value)}"
        )
    if value.startswith("data:"):  # a data URL: data:image/png;base64,....
        header, _, value = value.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInput(f"inputs[{index}]: a data URL must be base64-encoded")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"inputs[{index}] is not valid base64") from None
    if not data:
        raise InvalidInput(f"inputs[{index}] is empty: give an image")
    return data


def _kind(value: Any) -> str:
    """A JSON value's kind, as a client would name it."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
