"""Hot tiles: recently served tiles kept in memory, answered before routing.

A tile URL names the same bytes for as long as a process serves one model revision (painting
is deterministic), so a process may keep them as long as it likes. A hot tile costs one dict
lookup on the event loop: no store read or checksum, no hashing for the ETag, no worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class HotTile:
    body: bytes
    media_type: str
    etag: str  # computed once, when the tile enters memory


class HotTiles:
    """The least recently used tiles up to `max_bytes`, keyed by request path. Used from the event
    loop only, so it needs no lock.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._tiles: OrderedDict[str, HotTile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, path: str) -> HotTile | None:
        tile = self._tiles.get(path)
        if tile is not None:
            self._tiles.move_to_end(path)
        return tile

    def put(self, path: str, tile: HotTile) -> None:
        if len(tile.body) > self.max_bytes:
            return
        old = self._tiles.pop(path, None)
        if old is not None:
            self.size -= len(old.body)
        self._tiles[path] = tile
        self.size += len(tile.body)
        while self.size > self.max_bytes:
            _, evicted = self._tiles.popitem(last=False)
            self.size -= len(evicted.body)


class HotTileMiddleware:
    """Answers GET and HEAD of a hot tile path at once; everything else goes on to the app.

    Args:
        app: the wrapped application (routing and the tile endpoint, which fills `tiles`).
        tiles: the hot tiles.
        respond: builds the response to a hot tile, with the same headers the tile endpoint sends.
    """

    def __init__(self, app: ASGIApp, tiles: HotTiles, respond: Callable[[Scope, HotTile], Response]):
        self.app = app
        self.tiles = tiles
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            tile = self.tiles.get(scope["path"])
            if tile is not None:
                await self.respond(scope, tile)(scope, receive, send)
                return
        await self.app(scope, receive, send)
