"""The one error type the API answers with, and its JSON shape.

Every refusal is ``{"detail": "<one line naming the input and the reason>", "errors": [...]}``: ``detail`` is
what :class:`captionkit.errors.CaptionkitError` messages look like; ``errors`` (present when there is more than
the one line to say) lists each bad parameter as ``{"field", "error"}`` and each bad image as
``{"index", "image", "error"}``: the record the ``caption`` CLI writes for a file it could not read, plus the
image's position in the request (two uploads may share a file name).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

# nginx's status for a request whose client left before the answer: nobody reads it; /metrics counts it.
CLIENT_GONE = 499


class ApiError(Exception):
    """A request the server refuses: an HTTP status, one line, optional per-field/per-image records."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"detail": self.detail}
        if self.errors:
            body["errors"] = self.errors
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def field_error(field: str, reason: str) -> dict[str, str]:
    return {"field": field, "error": reason}


def invalid_fields(errors: list[dict[str, str]]) -> ApiError:
    """422 for one or more bad parameters; ``detail`` quotes the first, ``errors`` lists them all."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(422, f"{first['field']}: {first['error']}{more}", errors)


# What the API is, for a request to a path it does not have.
ROUTES = "POST /v1/captions, GET /v1/models, /healthz, /readyz, /metrics, /docs, / (the page)"


def route_refusal(method: str, path: str, status: int, headers: dict[str, str] | None) -> ApiError:
    """A 404 or 405 (or another status the routing answers) naming the request and what to do instead, rather than
    Starlette's bare ``Not Found``; keeps the routing's headers (``Allow``)."""
    path = path if len(path) <= 200 else path[:197] + "..."
    if status == 404:
        detail = f"{path}: not found (routes: {ROUTES})"
    elif status == 405:
        allowed = (headers or {}).get("Allow") or (headers or {}).get("allow") or "another method"
        detail = f"{method} {path}: method not allowed; use {allowed}"
    else:
        detail = f"{method} {path}: refused ({status})"
    return ApiError(status, detail, headers=dict(headers or {}))
