"""The receipt listener: the service's one small HTTP server, for gateways' delivery receipts.

aiohttp's web server: mature, maintained by the aio-libs team, asyncio-native, so it runs on
the same event loop as grpc.aio (and uvloop) with no thread and no second framework; its
AppRunner/TCPSite take `reuse_port`, so every worker of `serve --workers N` binds the same port
as the gRPC server does. Bodies are capped (MAX_BODY_BYTES) before they are read. Off unless
AUTHSVC_RECEIPTS_LISTEN is set. Routes and their checks: courier/receipts.py.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from authsvc.app import App
from authsvc.courier import receipts

log = structlog.get_logger("authsvc.receipts")

_APP_KEY = web.AppKey("authsvc", App)


def _refused(source: str, refused: receipts.Refused) -> web.Response:
    # The reason only: never the body, the query (token) or the signature.
    log.warning("receipt_refused", source=source, reason=refused.reason, status=refused.status)
    return web.Response(status=refused.status, text=refused.reason + "\n")


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
    web_app.router.add_get("/receipts/kannel", _kannel_receipt)
    return web_app


class ReceiptListener:
    """Started and stopped with the gRPC server (authsvc/server.py)."""

    def __init__(self, app: App, listen: str, *, reuse_port: bool = False) -> None:
        host, _, port = listen.rpartition(":")
        self._host = host or "0.0.0.0"  # noqa: S104 (gateways call in from outside)
        self._port = int(port)
        self._reuse_port = reuse_port
        self._runner = web.AppRunner(application(app), access_log=None)
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, reuse_port=self._reuse_port or None
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the one bound when ":0" was asked
        log.info("receipts_listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
