"""The answers every part of the server shares: the error type routes raise, its JSON form,
and the API's paths."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse

API_VERSION = "v1"
PREDICT_PATH = f"/{API_VERSION}/predict"


class ApiError(Exception):
    """An answer other than success, with its status, message and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(
    status: int, message: str, request_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{"error": {"status", "message", "id"}}``: every answer that is not a success."""
    return JSONResponse(
        {"error": {"status": status, "message": message, "id": request_id}},
        status_code=status,
        headers=headers,
    )
