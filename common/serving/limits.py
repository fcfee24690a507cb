"""Limits on what one HTTP request may carry, checked before the app sees it (pure ASGI middleware).

uvicorn's default parser (httptools) has no limit on header size or count: a 4 MB header and
10,000 headers were accepted. :class:`RequestLimits` answers, before any routing or parsing:

* 431 when there are more than :data:`MAX_HEADERS` headers or they hold more than
  :data:`MAX_HEADER_BYTES` bytes in total (names and values);
* 414 when the path and query string are longer than :data:`MAX_TARGET_BYTES`;
* 413 when ``Content-Length`` says more than the app's body limit, or is not a number.

A body without ``Content-Length`` (chunked) is counted by the endpoint that reads it
(``_read_body`` in :mod:`common.serving.routes`). ``loom serve`` also runs uvicorn's h11 parser
limit (``h11_max_incomplete_event_size``) where h11 is used.
"""

from __future__ import annotations

import json
from typing import Any

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
MAX_TARGET_BYTES = 8 * 1024


class RequestLimits:
    """Refuses requests over the limits above with a short JSON error (never reaches the app)."""

    def __init__(
        self,
        app: Any,
        body_limit: int,
        max_headers: int = MAX_HEADERS,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_target_bytes: int = MAX_TARGET_BYTES,
    ) -> None:
        self.app = app
        self.body_limit = body_limit
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.max_target_bytes = max_target_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self.check(scope)
            if refusal is not None:
                await answer_json(send, *refusal)
                return
        await self.app(scope, receive, send)

    def check(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        """``(status, detail)`` when the request is over a limit, else None."""
        headers = scope.get("headers") or []
        if len(headers) > self.max_headers:
            return 431, f"{len(headers)} headers; this server accepts at most {self.max_headers}"
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.max_header_bytes:
            return 431, f"the headers hold {size} bytes; this server accepts at most {self.max_header_bytes}"
        target = len(scope.get("raw_path") or scope.get("path", "").encode("utf-8", "replace"))
        target += len(scope.get("query_string") or b"")
        if target > self.max_target_bytes:
            return 414, f"the URL has {target} bytes; this server accepts at most {self.max_target_bytes}"
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        if lengths:
            text = lengths[0].strip()
            if len(lengths) > 1 or not text.isdigit():
                return 400, "Content-Length must be one whole number"
            if len(text) > 18 or int(text) > self.body_limit:
                return 413, f"the body is larger than the {self.body_limit} bytes this server accepts"
        return None


async def answer_json(send: Any, status: int, detail: str) -> None:
    """Answer ``{"detail": detail}`` with ``status``."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install_limits(app: Any, body_limit: int) -> None:
    """Put :class:`RequestLimits` in front of ``app`` (a FastAPI/Starlette app)."""
    app.add_middleware(RequestLimits, body_limit=body_limit)
