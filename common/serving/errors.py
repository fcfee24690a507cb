"""The one JSON error renderer of the prediction service: it never fails.

FastAPI's default 422 handler encodes the offending input as JSON. Hostile input breaks it:
``NaN``, ``±Infinity`` and ``1e400`` (parsed as floats) are "Out of range float values" for
JSON, and a body that is not UTF-8 leaves bytes that do not decode. Both became HTTP 500 with
a traceback. Here every error body is made of plain JSON values: non-finite numbers are shown
as text, bytes as a note, long values cut to :data:`SHOWN_CHARS`; should encoding still fail,
a fixed body goes out. A body that is not UTF-8 gets a 400 that says so.

:func:`install_error_handlers` installs the handlers on an app (one call in ``create_app``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

SHOWN_CHARS = 200
"""Longest text an error body repeats from the request."""
_MAX_ITEMS = 20
"""Most error items one 422 body lists."""
_FALLBACK = b'{"detail":"the request is not valid; the error could not be described"}'


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def safe_value(value: Any, depth: int = 0) -> Any:
    """``value`` as plain, finite, short JSON: what an error body may repeat."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _cut(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, str):
        return _cut(value.encode("utf-8", "replace").decode("utf-8"))  # lone surrogates cannot be encoded
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if depth >= 3:
        return "..."
    if isinstance(value, dict):
        return {_cut(str(k)): safe_value(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    if isinstance(value, list | tuple):
        return [safe_value(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return _cut(repr(value))


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A JSON response that cannot fail to render."""
    try:
        content = json.dumps(safe_value_deep(body), allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeError, RecursionError):
        content = _FALLBACK
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def safe_value_deep(body: dict[str, Any]) -> dict[str, Any]:
    """The top-level body with each of its values made safe (the items of ``detail`` one by one)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if isinstance(value, list):
            out[key] = [safe_item(v) if isinstance(v, dict) else safe_value(v) for v in value[:_MAX_ITEMS]]
        else:
            out[key] = safe_value(value)
    return out


def safe_item(item: dict[str, Any]) -> dict[str, Any]:
    """One 422 item (type, loc, msg, input): each part made safe; ``ctx`` and ``url`` dropped."""
    out = {key: safe_value(item[key], 1) for key in ("type", "loc", "msg") if key in item}
    if "input" in item:
        out["input"] = safe_value(item["input"], 1)
    return out


def _bad_bytes(errors: list[Any]) -> int | None:
    """Offset of the first byte that is not UTF-8 in a body pydantic refused as JSON, if that is why."""
    for error in errors:
        body = error.get("input") if isinstance(error, dict) and error.get("type") == "json_invalid" else None
        if isinstance(body, bytes | bytearray):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as err:
                return err.start
    return None


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """422 with FastAPI's shape (``detail``: items with ``loc``), or 400 for a body that is not UTF-8."""
    errors = list(exc.errors())
    offset = _bad_bytes(errors)
    if offset is not None:
        return json_response(400, {"detail": f"the body is not UTF-8 JSON (bad byte at offset {offset})"})
    return json_response(422, {"detail": errors})


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """4xx/5xx raised by the app: ``{"detail": ...}`` with the exception's headers."""
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return json_response(exc.status_code, {"detail": exc.detail}, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every request and HTTP error of ``app`` with :func:`json_response`."""
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
