"""HTTP endpoints for operators and monitoring: GET /health (JSON) and GET /metrics (Prometheus)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from engine.metrics import render

if TYPE_CHECKING:
    from engine.engine import Engine

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # port 0 in tests: the OS picks one
            self.port = server.sockets[0].getsockname()[1]
        log.info("health on http://%s:%d/health, metrics on /metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        report = self.engine.health()
        return web.json_response(report, status=200 if report["status"] == "ok" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = render(self.engine.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
