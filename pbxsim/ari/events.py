"""The events WebSocket (GET /ari/events): who is connected for which app, and every event sent,
checked against the api-docs models first (a non-conforming one is a violation)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

from pbxsim.ari.model import ASTERISK_ID, SimChannel, ari_time
from pbxsim.faults import Faults
from pbxsim.schema import AriSpec


class AppSocket:
    """One events WebSocket; a writer task keeps events in order without blocking the PBX."""

    def __init__(self, ws: web.WebSocketResponse, apps: list[str]) -> None:
        self.ws = ws
        self.apps = apps
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.replaced: set[str] = set()

    async def writer(self) -> None:
        while (item := await self.queue.get()) is not None:
            try:
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return


class EventBus:
    def __init__(self, *, spec: AriSpec, violations: list[str], faults: Faults) -> None:
        self.spec = spec
        self.violations = violations
        self.faults = faults  # replaced whole by POST /sim/faults: SimPBX keeps this one current
        self.sockets: dict[str, AppSocket] = {}  # app -> newest socket
        self.all_sockets: set[AppSocket] = set()
        self.block_until = 0.0  # monotonic: new sockets are refused (503) until then
        self.drop_event_types: set[str] = set()  # events "lost" on purpose, to test timeouts

    def emit(self, app: str | None, event: dict[str, Any]) -> None:
        if app is None:
            return
        event = {**event, "application": app, "timestamp": ari_time(), "asterisk_id": ASTERISK_ID}
        self.violations.extend(self.spec.validate_event(event))
        sock = self.sockets.get(app)
        if sock is None or app in sock.replaced or event["type"] in self.drop_event_types:
            return  # missed events are never replayed
        sock.queue.put_nowait(json.dumps(event))

    def channel_event(self, ch: SimChannel, event: dict[str, Any]) -> None:
        """A channel's event: to its app while it is in Stasis, and to every app subscribed to it."""
        apps = set(ch.subscribed)
        if ch.in_stasis and ch.app:
            apps.add(ch.app)
        for app in sorted(apps):
            self.emit(app, event)

    def send_raw(self, app: str, text: str) -> bool:
        """A text frame exactly as given (not checked against the spec) on the app's socket."""
        sock = self.sockets.get(app)
        if sock is None:
            return False
        sock.queue.put_nowait(text)
        return True

    def app_active(self, app: str) -> bool:
        s = self.sockets.get(app)
        return s is not None and app not in s.replaced

    def active_apps(self) -> list[str]:
        return [a for a in self.sockets if self.app_active(a)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        match = self.spec.match("GET", "/events")
        assert match is not None
        errors = self.spec.validate_request(match[0], request.query, None)
        if errors:
            self.violations.extend(errors)
            return web.json_response({"message": "; ".join(errors)}, status=400)
        if time.monotonic() < self.block_until:
            return web.json_response({"message": "service unavailable"}, status=503)
        apps = [a for a in request.query["app"].split(",") if a]
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        sock = AppSocket(ws, apps)
        if self.faults.oversize_frame_bytes:
            sock.queue.put_nowait("x" * self.faults.oversize_frame_bytes)
        writer = asyncio.ensure_future(sock.writer())
        for app in apps:
            old = self.sockets.get(app)
            if old is not None:
                # The newest socket gets everything; the older one hears once that it was replaced.
                old.queue.put_nowait(json.dumps({"type": "ApplicationReplaced", "application": app, "timestamp": ari_time(), "asterisk_id": ASTERISK_ID}))
                old.replaced.add(app)
            self.sockets[app] = sock
        self.all_sockets.add(sock)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.all_sockets.discard(sock)
            for app in apps:
                if self.sockets.get(app) is sock:
                    del self.sockets[app]
            sock.queue.put_nowait(None)
            await writer
        return ws

    async def drop(self, block_s: float | None = None) -> int:
        """Closes every socket (and with ``block_s`` refuses new ones for that long)."""
        if block_s is not None:
            self.block_until = time.monotonic() + block_s
        socks = list(self.all_sockets)
        # Detached at once: whatever is emitted from now on is lost, as while Asterisk has no socket.
        for app, sock in list(self.sockets.items()):
            if sock in socks:
                del self.sockets[app]
        for s in socks:
            await s.ws.close()
        return len(socks)

    async def close(self) -> None:
        for s in list(self.all_sockets):
            s.queue.put_nowait(None)
            await s.ws.close()
