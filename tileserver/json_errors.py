"""JSON bodies for the errors Starlette's own parts answer in plain text.

The app's error handler answers JSON `{"error", "status"}` everywhere but on tile URLs. A few
errors never reach it: a refused CORS preflight (400, from `CORSMiddleware`) and a bad or
unsatisfiable `Range` on the viewer's files (400 or 416, from `FileResponse`). This middleware,
outside them all, rewrites plain-text errors into the same JSON, except where text is meant.
"""

from __future__ import annotations

import http
import json
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class JSONErrors:
    """Args:
        app: the app to wrap.
        text_errors: whether a request's errors stay text (tile URLs); asked once the request is routed.
    """

    def __init__(self, app: ASGIApp, text_errors: Callable[[Scope], bool]):
        self.app = app
        self.text_errors = text_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: Message | None = None  # a plain-text error's start, held until its body is complete
        body = b""

        async def send_json_errors(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start" and _plain_text_error(message) and not self.text_errors(scope):
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
