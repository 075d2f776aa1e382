"""Domain errors and their HTTP mapping — the one place errors become status codes.

Every HTTP API answers errors in one shape: ``{"error": {"type", "message", "code"}}``
(the LLM API uses the same keys, which is OpenAI's shape).
"""
from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "code": self.code}}


class BadRequest(DomainError):
    status, type, code = 400, "invalid_request_error", "bad_request"


class Unauthorized(DomainError):
    status, type, code = 401, "authentication_error", "unauthorized"


class PaymentRequired(DomainError):
    status, type, code = 402, "insufficient_quota", "insufficient_balance"


class Forbidden(DomainError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(DomainError):
    status, type, code = 404, "not_found_error", "not_found"


class MethodNotAllowed(DomainError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class Conflict(DomainError):
    status, type, code = 409, "conflict_error", "conflict"


class PayloadTooLarge(DomainError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class UnprocessableEntity(DomainError):
    status, type, code = 422, "invalid_request_error", "validation_error"


class TooManyRequests(DomainError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class Unavailable(DomainError):
    status, type, code = 503, "service_unavailable", "unavailable"


def error_body(status: int, type_: str, message: str, code: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "code": code}}


def validation_message(exc: Exception) -> str:
    """A readable one-liner from a pydantic ValidationError (field path: message; ...)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
