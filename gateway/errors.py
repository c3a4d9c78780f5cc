"""Errors the service layer raises; the HTTP layer renders them as RFC 9457 problem+json.

Messages are written for the caller and never contain a submitted value: a value may be an ID
number, a name or a phone number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError


class ApiError(Exception):
    status = 500
    title = "Internal error"
    type = "about:blank"

    def __init__(
        self,
        detail: str = "",
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


class BadRequest(ApiError):
    status, title, type = 400, "Bad request", "https://tongban.dev/problems/bad-request"


class Unauthorized(ApiError):
    status, title, type = 401, "Unauthorized", "https://tongban.dev/problems/unauthorized"


class Forbidden(ApiError):
    status, title, type = 403, "Forbidden", "https://tongban.dev/problems/forbidden"


class NotFound(ApiError):
    status, title, type = 404, "Not found", "https://tongban.dev/problems/not-found"


class Conflict(ApiError):
    status, title, type = 409, "Conflict", "https://tongban.dev/problems/conflict"


class TooLarge(ApiError):
    status, title, type = 413, "Payload too large", "https://tongban.dev/problems/too-large"


class UnsupportedMedia(ApiError):
    status, title = 415, "Unsupported media type"
    type = "https://tongban.dev/problems/unsupported-media-type"


class Unprocessable(ApiError):
    status, title, type = 422, "Validation failed", "https://tongban.dev/problems/validation"


class TooManyRequests(ApiError):
    status, title, type = 429, "Too many requests", "https://tongban.dev/problems/rate-limited"


class Unavailable(ApiError):
    status, title, type = 503, "Service unavailable", "https://tongban.dev/problems/unavailable"


def field_errors(exc: ValidationError, prefix: Iterable[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic errors as ``{"loc", "msg", "type"}``, without the offending input."""
    head = list(prefix)
    return [
        {"loc": head + _without_tags(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


# Tags pydantic inserts into a location for a discriminated union; callers never wrote them.
UNION_TAGS = frozenset({"natural_person", "legal_person"})


def _without_tags(loc: tuple[int | str, ...]) -> list[int | str]:
    return [
        p for i, p in enumerate(loc) if not (p in UNION_TAGS and i and loc[i - 1] == "applicant")
    ]


def invalid(loc: list[str | int], msg: str, type_: str = "value_error") -> Unprocessable:
    return Unprocessable(
        "the request breaks the contract", errors=[{"loc": loc, "msg": msg, "type": type_}]
    )
