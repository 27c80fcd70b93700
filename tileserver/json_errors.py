"""JSON bodies for the errors Starlette's own parts answer in plain text.

The app's error handler answers JSON `{"error", "status"}` everywhere but on tile URLs. A few
errors never reach it: a refused CORS preflight (400, from `CORSMiddleware`) and a bad or
unsatisfiable `Range` on the viewer's files (400 or 416, from `FileResponse`). This middleware,
outside them all, rewrites those plain-text errors into the same JSON.
"""

from __future__ import annotations

import http
import json

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tileserver.encode import MEDIA_TYPES


def is_tile_path(path: str) -> bool:
    """Shaped like an image URL: errors there stay short text, what an image client shows."""
    return path.rsplit(".", 1)[-1].lower() in MEDIA_TYPES


class JSONErrors:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_tile_path(scope["path"]):
            return await self.app(scope, receive, send)
        start: Message | None = None  # a plain-text error's start, held until its body is complete
        body = b""

        async def send_json_errors(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start" and _plain_text_error(message):
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            status = start["status"]
            detail = body.decode("utf-8", "replace").strip() or http.HTTPStatus(status).phrase
            payload = json.dumps({"error": detail, "status": status}).encode()
            headers = MutableHeaders(raw=list(start["headers"]))
            headers["content-type"] = "application/json"
            headers["content-length"] = str(len(payload))
            await send({**start, "headers": headers.raw})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})

        await self.app(scope, receive, send_json_errors)


def _plain_text_error(start: Message) -> bool:
    if start["status"] < 400:
        return False
    content_type = dict(start["headers"]).get(b"content-type", b"")
    return content_type.startswith(b"text/plain")
