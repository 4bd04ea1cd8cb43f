"""The HTTP side of /health and /metrics, in its own process (started by engine/health.py).

It serves on a listening socket the engine bound and passed down, and asks the engine for bodies
over its stdin/stdout: a line ``health`` or ``metrics`` out, a frame back (4-byte length, pickled
``(kind, status, content_type, body)``). A body is reused for ``max_age_s``, and one request to the
engine serves every HTTP request waiting for it. Thousands of requests, or slow clients, cost this
process only: the engine's loop, where RTP is paced, renders at most two bodies per window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import struct
import sys
import time
from typing import Awaitable, Callable

from aiohttp import web

from runtime.ratelimit import RateLimitFilter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LEN = struct.Struct(">I")
ENGINE_ANSWER_TIMEOUT_S = 2.0  # an engine that renders no body in this time is stuck


def encode_body(kind: str, status: int, content_type: str, body: bytes) -> bytes:
    data = pickle.dumps((kind, status, content_type, body))
    return _LEN.pack(len(data)) + data


class Server:
    def __init__(self, sock: socket.socket, max_age_s: float, max_in_flight: int) -> None:
        self.sock = sock
        self.max_age_s = max_age_s
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.cache: dict[str, tuple[float, int, str, bytes]] = {}
        self.waiting: dict[str, asyncio.Future[tuple[int, str, bytes]]] = {}
        self.out: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        self.out = asyncio.StreamWriter(transport, protocol, None, loop)
        app = web.Application(middlewares=[self.bounded])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=5.0)  # idle clients go soon
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        try:
            while True:  # until the engine closes our stdin (it stopped, or died)
                head = await reader.readexactly(_LEN.size)
                kind, status, ctype, body = pickle.loads(await reader.readexactly(_LEN.unpack(head)[0]))
                self.cache[kind] = (time.monotonic(), status, ctype, body)
                fut = self.waiting.pop(kind, None)
                if fut is not None and not fut.done():
                    fut.set_result((status, ctype, body))
        except asyncio.IncompleteReadError:
            pass
        finally:
            await runner.cleanup()

    @web.middleware
    async def bounded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.in_flight >= self.max_in_flight:
            return web.json_response({"status": "busy", "detail": "too many requests in flight"}, status=503, headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            self.in_flight -= 1

    async def health(self, request: web.Request) -> web.Response:
        return await self.respond("health")

    async def metrics(self, request: web.Request) -> web.Response:
        return await self.respond("metrics")

    async def respond(self, kind: str) -> web.Response:
        cached = self.cache.get(kind)
        if cached is not None and time.monotonic() - cached[0] < self.max_age_s:
            status, ctype, body = cached[1:]
        else:
            fut = self.waiting.get(kind)
            if fut is None:
                fut = self.waiting[kind] = asyncio.get_running_loop().create_future()
                assert self.out is not None
                self.out.write(kind.encode() + b"\n")
            try:
                status, ctype, body = await asyncio.wait_for(asyncio.shield(fut), ENGINE_ANSWER_TIMEOUT_S)
            except TimeoutError:
                self.waiting.pop(kind, None)
                status, ctype = 503, "application/json"
                body = json.dumps({"status": "stuck", "detail": f"the engine did not answer in {ENGINE_ANSWER_TIMEOUT_S:.0f} s"}).encode()
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})


def main() -> int:
    fd, max_age_s, max_in_flight = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s health-http %(name)s: %(message)s")
    for name in ("aiohttp.server", "aiohttp.web"):  # one line per kind of bad request per interval
        logging.getLogger(name).addFilter(RateLimitFilter(client_faults=True))
    sock = socket.socket(fileno=fd)
    asyncio.run(Server(sock, max_age_s, max_in_flight).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
