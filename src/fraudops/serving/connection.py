"""The HTTP connection: uvicorn's httptools protocol, with a deadline and a size limit for request heads.

uvicorn waits for the rest of a request head as long as a client likes (a connection sending part of its
headers is held open for ever, a slowloris) and buffers a head of any size. Here a request head must be
complete within ``serve.header_timeout`` seconds of its first byte and within :data:`MAX_HEAD_BYTES`,
or the client is answered 408 (or 431) and the connection closed. A connection that never starts a
request is closed after the keep-alive timeout, as uvicorn closes one idle between requests.

The deadline costs a request two attribute writes: one sweep a second per worker process closes the
connections whose head is late (a timer per request would cost more than the rest of a small request).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# nginx answers 400 above 32 KiB of headers (4 x 8k), Node.js above 16 KiB; a head is never this big.
MAX_HEAD_BYTES = 64 * 1024
SWEEP_SECONDS = 0.5


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error_code": code, "message": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request head must arrive within ``head_timeout`` seconds."""

    head_timeout = 10.0  # serve.header_timeout, set by configure() in each worker before it serves
    _sweeping: asyncio.AbstractEventLoop | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_since: float | None = None  # loop time of the first byte of a request head being read
        self.head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        cls = type(self)
        if cls._sweeping is not self.loop:
            cls._sweeping = self.loop
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        if self.head_since is not None:  # a head begun in an earlier packet: these bytes are all head
            self.head_bytes += len(data)
        super().data_received(data)
        if self.head_since is not None and self.head_bytes > MAX_HEAD_BYTES:
            self.refuse(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        self.head_since = self.loop.time()
        self.head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_since = None
        super().on_headers_complete()

    def refuse(self, status: int, reason: str, message: str) -> None:
        """Answer a request whose head never completed, and close the connection."""
        self.head_since = None
        if not self.transport.is_closing():
            code = "REQUEST_TIMEOUT" if status == 408 else "HEADERS_TOO_LARGE"
            self.transport.write(_answer(status, reason, code, message))
            self.transport.close()


def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    """Close the connections whose request head is late; again in SWEEP_SECONDS."""
    now = loop.time()
    for conn in list(connections):
        since = getattr(conn, "head_since", None)
        if since is not None and now - since > conn.head_timeout:
            conn.refuse(
                408,
                "Request Timeout",
                f"request headers not received within serve.header_timeout={conn.head_timeout:g} seconds",
            )
    loop.call_later(SWEEP_SECONDS, _sweep, loop, connections)


def configure(header_timeout: float) -> None:
    """Set the head deadline of the connections of this process (from ``serve.header_timeout``)."""
    GuardedHttpToolsProtocol.head_timeout = header_timeout
