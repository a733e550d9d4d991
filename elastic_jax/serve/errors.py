"""API errors in OpenAI's error object: one status, one message that names the field at fault."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the client caused (4xx) or the server refused (429, 503), rendered as OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def kind(self) -> str:
        return {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error", 503: "service_unavailable"}.get(self.status, "invalid_request_error"
                                                                          if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code or self.status}}


def bad_field(param: str, message: str) -> ApiError:
    """A 400 about one request field: the message starts with the field's name."""
    return ApiError(400, f"{param}: {message}", param=param)


__all__ = ["ApiError", "bad_field"]
