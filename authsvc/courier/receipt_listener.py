"""The receipt listener: the service's one small HTTP server, for gateways' delivery receipts.

aiohttp's web server: mature, maintained by the aio-libs team, asyncio-native, so it runs on
the same event loop as grpc.aio (and uvloop) with no thread and no second framework; its
AppRunner/TCPSite take `reuse_port`, so every worker of `serve --workers N` binds the same port
as the gRPC server does. Bodies are capped (MAX_BODY_BYTES) before they are read. Off unless
AUTHSVC_RECEIPTS_LISTEN is set. Routes and their checks: courier/receipts.py.

The listener shares its process, event loop and file descriptors with the gRPC server, and
faces the internet: a stranger's half-sent requests must not starve the API (slowloris).
aiohttp bounds what a request may be, not how long it may take or how many connections may
wait, so every connection goes through `_Bounded`: at most MAX_CONNECTIONS at once (beyond,
accepted and closed at once) and each closed CONNECTION_LIFETIME_S after it opened, whatever
it is doing (a gateway's receipt is one small request; a kept-alive gateway reconnects).
The worst a stranger can do is delay receipts, which are advisory; codes and logins go on.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog
from aiohttp import web

from authsvc.app import App
from authsvc.courier import receipts

log = structlog.get_logger("authsvc.receipts")

_APP_KEY = web.AppKey("authsvc", App)

# Connections open at once (per process), and how long one may stay open.
MAX_CONNECTIONS = 256
CONNECTION_LIFETIME_S = 10.0


class _Bounded(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted and given a deadline."""

    def __init__(self, inner: Any, live: list[int]) -> None:
        self._inner = inner
        self._live = live
        self._deadline: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a TCP server's (uvloop's too)
        if self._live[0] >= MAX_CONNECTIONS:
            transport.abort()  # no buffer, no handler: the fd goes back at once
            return
        self._live[0] += 1
        self._counted = True
        self._deadline = asyncio.get_running_loop().call_later(
            CONNECTION_LIFETIME_S, transport.abort
        )
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._live[0] -= 1
        if self._deadline is not None:
            self._deadline.cancel()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _refused(source: str, refused: receipts.Refused) -> web.Response:
    # The reason only: never the body, the query (token) or the signature.
    log.warning("receipt_refused", source=source, reason=refused.reason, status=refused.status)
    return web.Response(status=refused.status, text=refused.answered + "\n")


async def _http_receipt(request: web.Request) -> web.Response:
    app = request.app[_APP_KEY]
    channel = request.match_info["channel"]
    try:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        now_s = app.clock.now().timestamp()
        claim = receipts.check_webhook(app, channel, headers, body, now_s)
    except receipts.Refused as refused:
        return _refused(f"http {channel}", refused)
    await receipts.apply(app, claim, source=f"http {channel}")
    return web.Response(status=204)


async def _kannel_receipt(request: web.Request) -> web.Response:
    app = request.app[_APP_KEY]
    try:
        claim = receipts.check_kannel(app, dict(request.query))
    except receipts.Refused as refused:
        return _refused("kannel", refused)
    await receipts.apply(app, claim, source="kannel")
    return web.Response(status=204)


def application(app: App) -> web.Application:
    web_app = web.Application(client_max_size=receipts.MAX_BODY_BYTES)
    web_app[_APP_KEY] = app
    web_app.router.add_post("/receipts/http/{channel}", _http_receipt)
    # GET only: a HEAD must not apply a receipt.
    web_app.router.add_get("/receipts/kannel", _kannel_receipt, allow_head=False)
    return web_app


class ReceiptListener:
    """Started and stopped with the gRPC server (authsvc/server.py)."""

    def __init__(self, app: App, listen: str, *, reuse_port: bool = False) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host or "0.0.0.0"  # noqa: S104 (gateways call in from outside)
        self._port = int(port)
        self._reuse_port = reuse_port
        # keepalive_timeout: an idle kept-alive connection goes sooner than its lifetime.
        self._runner = web.AppRunner(application(app), access_log=None, keepalive_timeout=2.0)
        self._server: asyncio.Server | None = None
        # Connections open now: one counter per listener (the event loop's thread only).
        self.live = [0]
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Bounded(handler(), self.live),
            self._host,
            self._port,
            reuse_port=self._reuse_port or None,
            backlog=128,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])  # ":0" asked: the one bound
        log.info("receipts_listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
