"""The HTTP server's connections: how many, and how long a slow client may hold one.

uvicorn bounds what it is told to (`limit_concurrency`: past it a new request gets 503; an idle
kept-alive connection closes after `timeout_keep_alive`), but it waits forever for a request's
headers: a client that connects and sends nothing, or a header a byte at a time, holds its
connection open indefinitely. `HeaderDeadline` closes a connection whose request headers have
not all arrived `serve.header_timeout_s` after it opened or after its previous reply. The body
has its own deadline (serving/api.py's Guard answers 408).
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from configs.base import ServeConfig


class HeaderDeadline(HttpToolsProtocol):
    header_timeout_s = 10.0  # set per server by `uvicorn_config`, which makes a subclass

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._drop)

    def on_headers_complete(self) -> None:
        self._header_deadline.cancel()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next request's headers have the same time
            self._header_deadline.cancel()
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._drop)

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        super().connection_lost(exc)

    def _drop(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request is being answered
            self.transport.close()


def uvicorn_config(app, serve: ServeConfig, **kwargs) -> uvicorn.Config:
    """uvicorn's settings for `app` from the serve config: address, connection limit, timeouts."""
    protocol = type("HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": serve.header_timeout_s})
    return uvicorn.Config(app, host=serve.host, port=serve.port, http=protocol, limit_concurrency=serve.max_connections,
                          timeout_keep_alive=serve.keep_alive_s, **kwargs)
