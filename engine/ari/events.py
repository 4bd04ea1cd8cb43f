"""The app's ARI events WebSocket, kept open: reconnects with backoff and reports each (re)connect."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Awaitable, Callable

import aiohttp

from engine.ari.client import AriClient
from engine.ari.models import AriEvent, EventParseError, parse_event
from runtime.backoff import Backoff
from runtime.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

EventHandler = Callable[[AriEvent], None]
ConnectHandler = Callable[[bool], Awaitable[None]]  # argument: True on a reconnect


class AriEventStream:
    def __init__(
        self, client: AriClient, app: str, on_event: EventHandler, on_connect: ConnectHandler, on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.app = app
        self._on_event = on_event
        self._on_connect = on_connect
        # ARI refused the credentials (401): no retry fixes that; the engine's owner exits with it.
        self._on_refused = on_refused
        cfg = client.config
        self._backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.malformed_events = 0
        self.handler_errors = 0
        self.last_error: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._first = asyncio.Event()
        self._rl = RateLimitedLog(log)

    def _refused(self, status: int, message: str) -> str:
        """What an operator must fix when ARI answers the events WebSocket with an error."""
        cfg = self.client.config
        if status == 401:
            return (f"ARI refused user {cfg.ari_username!r} (401): set asterisk.ari_username and ari_password "
                    "(ASTERISK_ARI_USERNAME, ASTERISK_ARI_PASSWORD) to a user of ari.conf")
        if status == 404:
            return f"no ARI at {self.client.base_url} (404): load res_ari and enable it in ari.conf (and http.conf)"
        return f"ARI refused the events WebSocket: {status} {message}"

    @property
    def url(self) -> str:
        base = self.client.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return f"{base}/events?app={self.app}&subscribeAll=false"

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close_socket(self) -> None:
        """Drop the current socket (the run loop reconnects); used by tests and on ApplicationReplaced."""
        if self._ws is not None:
            await self._ws.close()

    async def run(self) -> None:
        cfg = self.client.config
        while True:
            try:
                async with self.client.session.ws_connect(self.url, heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)) as ws:
                    self._ws = ws
                    reconnect = self.connects > 0
                    self.connects += 1
                    self.connected = True
                    self.last_error = None
                    connected_at = asyncio.get_running_loop().time()
                    log.info("ARI events connected (%s, app %s)%s", self.client.base_url, self.app, " again" if reconnect else "")
                    try:
                        await self._on_connect(reconnect)
                    except Exception as e:  # a failed reconcile must not kill the event stream
                        log.exception("ARI reconcile after connect failed: %s", e)
                    self._first.set()
                    bad_frame: BaseException | None = None
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(msg.data)
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            bad_frame = ws.exception() or msg.data
                            break
                        elif msg.type == aiohttp.WSMsgType.CLOSE:
                            break
                    lived = asyncio.get_running_loop().time() - connected_at
                    if bad_frame is not None:
                        self.last_error = f"ARI sent a frame the engine cannot take ({bad_frame}); websocket closed ({ws.close_code})"
                    else:
                        self.last_error = f"websocket closed ({ws.close_code})"
                    # A socket that ends in a bad frame soon after it opened (an ARI that sends one on
                    # every connect) is a failed attempt: the backoff goes on growing, as for a
                    # refused connect, instead of a reconnect storm.
                    if bad_frame is None or lived >= cfg.reconnect_max_s:
                        self._backoff.reset()
            except asyncio.CancelledError:
                raise
            except aiohttp.WSServerHandshakeError as e:
                self.last_error = self._refused(e.status, e.message)
                if e.status == 401 and self._on_refused is not None:
                    self._on_refused(self.last_error)
                    await asyncio.Event().wait()  # until the engine stops: said once, not at every retry
            except aiohttp.ClientConnectorError as e:
                why = "connection refused" if isinstance(e.os_error, ConnectionRefusedError) else e.os_error.strerror or str(e.os_error)
                self.last_error = (
                    f"cannot reach ARI at {cfg.host}:{cfg.ari_port} ({why}): is Asterisk running, "
                    "with its HTTP server on (http.conf)? (asterisk.host, asterisk.ari_port)"
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                self.last_error = f"{e.__class__.__name__}: {e}"
            finally:
                self._ws = None
                if self.connected:
                    self.disconnects += 1
                self.connected = False
            delay = self._backoff.next_delay()
            # One line per interval, however often it happens (the count follows in the next).
            self._rl.warning("disconnected", f"ARI events disconnected ({self.last_error}); reconnecting in {delay:.2f}s")
            await asyncio.sleep(delay)

    def _dispatch(self, text: str) -> None:
        try:
            data = json.loads(text)
            event = parse_event(data)
        except (ValueError, RecursionError, EventParseError) as e:
            self.malformed_events += 1
            self._rl.warning("malformed", f"ignored malformed ARI event: {e}: {text[:120]!r}")
            return
        if event is None:
            return
        if getattr(event, "application", self.app) not in ("", self.app):
            return
        try:
            self._on_event(event)
        except Exception as e:  # a bug in handling one event must not stop the next ones
            self.handler_errors += 1
            self._rl.error(f"handler-{event.type}", f"ARI event handler failed on {event.type}: {e}", exc_info=e)
