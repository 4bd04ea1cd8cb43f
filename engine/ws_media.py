"""WebSocket media: chan_websocket (Asterisk 22), the call's audio on a WebSocket.

An ExternalMedia channel with transport=websocket, encapsulation=none carries the call's audio as
BINARY frames in the channel's format (ulaw, slin, slin16) and control as TEXT messages
(media/ws_media.py). Two ways to connect:

- server (``websocket.connection_type``): Asterisk serves the WebSocket on its own HTTP server at
  ``/media/<MEDIA_WEBSOCKET_CONNECTION_ID>`` (sub-protocol ``media``); the engine connects there
  with ARI's host, port, scheme and credentials and waits for MEDIA_START.
- client: Asterisk connects to the engine's WebSocket server (``websocket.host:port``) through the
  connection ``websocket.client_connection`` of its websocket_client.conf; the URI carries the
  call's channel id (``transport_data`` ``v(aiagent_channel=ID)``), and MEDIA_START's channel_id
  says the same.

Asterisk plays what the engine sends one frame per ptime from a queue of 1000 and says MEDIA_XOFF
at 900, MEDIA_XON below 800: the pacer sends in real time, so the queue stays near empty; while
XOFF holds, frames are dropped (counted as a slow reader) and the call goes on. Asterisk's frames
to the engine come every 20 ms from the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from engine.ari.client import AriClient
from engine.ari.models import Channel
from engine.config import AppConfig, Transport, WebSocketMediaConfig
from engine.media import CallMedia, MediaLink
from engine.transports import MediaSetupError, StreamCounters, TransportStatus
from media.audio import FixedResampler, Resampler, ulaw_to_pcm16
from media.ws_media import FRAME_BYTES, Command, DtmfEnd, ErrorEvent, FlowEvent, MediaStart, Status, WsMediaProtocolError, format_command, parse_event
from runtime.clock import Clock
from runtime.ratelimit import RateLimitedLog
from runtime.tasks import OwnedTasks

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log, 10.0)

# A media frame is 160-640 bytes; Asterisk's own limit for what it reads is 64 KiB. A larger
# message is refused on its header (aiohttp reads the length first) and never buffered.
MAX_MSG_BYTES = 65536
SEND_QUEUE_FRAMES = 50  # 1 s of audio waiting for the socket: more is a slow reader's, dropped
CLOSE_TIMEOUT_S = 2.0
CALL_PARAM = "aiagent_channel"  # client mode: the URI parameter that names the call's channel


@dataclass(slots=True, kw_only=True)
class WsCounters(StreamCounters):
    xoff: int = 0
    errors: int = 0  # ERROR events from Asterisk


class _Codec:
    """The channel's format at the link's edge: the engine's 8 kHz u-law frames out, 8 kHz PCM16 in."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.frame_bytes = FRAME_BYTES[fmt]
        # Whole frames (chan_websocket drops a partial one): one out per 20 ms frame in.
        self._up = FixedResampler(8000, 16000) if fmt == "slin16" else None
        self._down = Resampler(16000, 8000) if fmt == "slin16" else None

    def outbound(self, ulaw: bytes) -> bytes:
        if self.fmt == "ulaw":
            return ulaw
        pcm = ulaw_to_pcm16(ulaw)
        return pcm if self._up is None else self._up.process(pcm)

    def inbound(self, payload: bytes) -> tuple[bytes, int] | None:
        """8 kHz PCM16 and the message's own sample count; None: not whole samples."""
        if self.fmt == "ulaw":
            return ulaw_to_pcm16(payload), len(payload)
        if len(payload) % 2:
            return None
        if self._down is None:
            return payload, len(payload) // 2
        return self._down.process(payload), len(payload) // 2


class WebSocketLink:
    """One call's media WebSocket: Asterisk's frames to the call, the pacer's frames to Asterisk
    through a small send queue (a socket that does not drain loses frames, not the call)."""

    transport = "websocket"

    def __init__(self, owner: WebSocketTransport, ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, start: MediaStart, where: str) -> None:
        self.owner = owner
        self.ws = ws
        self.start = start
        self.where = where
        self.codec = _Codec(start.format)
        self.media: CallMedia | None = None
        self.xoff = False
        self.closed = False  # close() called: the end is ours
        self.ended: str | None = None  # why the socket ended, once it has
        self.status: Status | None = None  # Asterisk's last answer to GET_STATUS
        self._out: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self._sender = owner.tasks.spawn(self._send_loop())

    # ---- MediaLink
    def attach(self, media: CallMedia) -> None:
        self.media = media

    def send_frame(self, media: CallMedia, payload: bytes, marker: bool) -> bool:
        if self.closed or self.ended is not None:
            return False
        c = self.owner.counters
        if self.xoff or self._out.qsize() >= SEND_QUEUE_FRAMES:
            # Asterisk's queue is full (XOFF) or the socket does not drain: this frame is lost to
            # a slow reader; the call goes on and the next frames go when it reads again.
            c.slow_reader += 1
            return True
        self._out.put_nowait(self.codec.outbound(payload))
        return True

    def flush(self) -> None:
        """Barge-in: what Asterisk queued to play goes too (FLUSH_MEDIA; the pacer keeps its queue
        near empty, but a frame or two is up to 40 ms the caller would hear after the agent stopped)."""
        self.command(Command("FLUSH_MEDIA"))

    def hangup(self) -> None:
        """The call is ending: HANGUP and the socket closed before ARI deletes the channel (its
        own hangup then, not a socket cut under a live channel)."""
        self.close()

    def close(self) -> None:
        """The call ended: HANGUP if the socket is still up, then the socket closes."""
        if self.closed:
            return
        self.closed = True
        while not self._out.empty():  # queued audio is for a call that is over
            self._out.get_nowait()
        if self.ended is None and not self.ws.closed:
            self._out.put_nowait(format_command(Command("HANGUP")))
        self._out.put_nowait(None)

    def command(self, cmd: Command) -> None:
        if not self.closed and self.ended is None:
            self._out.put_nowait(format_command(cmd))

    # ---- the socket
    async def _send_loop(self) -> None:
        c = self.owner.counters
        ws = self.ws
        try:
            while True:
                item = await self._out.get()
                if item is None:
                    break
                if ws.closed:
                    continue
                try:
                    if isinstance(item, bytes):
                        await ws.send_bytes(item)
                    else:
                        await ws.send_str(item)
                except (ConnectionError, RuntimeError) as e:
                    _rl.warning("send", f"media WebSocket {self.where}: send failed: {e}")
                    continue
                c.messages_out += 1
                c.bytes_out += len(item)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT_S)

    async def run(self) -> None:
        """Reads until the socket ends; an end that is not the call's own is reported to it."""
        ws = self.ws
        reason = "the media WebSocket closed"
        try:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._binary(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self._text(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    reason = f"Asterisk closed the media WebSocket (code {ws.close_code})"
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    err = msg.data
                    if isinstance(err, aiohttp.WebSocketError) and err.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                        self.owner.counters.oversize += 1
                        reason = f"a media WebSocket message over {MAX_MSG_BYTES} bytes (refused, the socket closed)"
                    else:
                        reason = f"media WebSocket error: {err}"
                    break
        finally:
            self._ended(reason)

    def _ended(self, reason: str) -> None:
        if self.ended is not None:
            return
        self.ended = reason
        self._out.put_nowait(None)
        if self.closed:
            return
        media = self.media
        owner = media.owner if media is not None else None
        if media is not None and owner is None:
            return  # the call is being torn down: its channel's hangup closed the socket
        # Before the call took the link (setup) or during it: the socket ended first.
        self.owner.counters.cut += 1
        if media is not None and owner is not None:
            _rl.warning("cut", f"[{media.session.call_id}] {reason}: the call ends")
            owner.media_lost(reason)

    def _binary(self, data: bytes) -> None:
        c = self.owner.counters
        c.messages_in += 1
        c.bytes_in += len(data)
        media = self.media
        if media is None:
            return  # before the call was ready for it
        got = self.codec.inbound(data)
        if got is None:
            c.malformed += 1
            media.malformed()
            _rl.warning("odd", f"[{media.session.call_id}] dropped a {len(data)}-byte {self.codec.fmt} media frame (not whole samples)")
            return
        pcm8, samples = got
        media.receive_stream(pcm8, self.owner.clock.now(), samples=samples, nbytes=len(data))

    def _text(self, text: str) -> None:
        c = self.owner.counters
        c.messages_in += 1
        c.bytes_in += len(text)
        call = self.media.session.call_id if self.media is not None else self.start.channel_id
        try:
            ev = parse_event(text)
        except WsMediaProtocolError as e:
            c.malformed += 1
            if self.media is not None:
                self.media.malformed()
            _rl.warning("text", f"[{call}] ignored a media WebSocket message: {e}: {text[:60]!r}")
            return
        if isinstance(ev, FlowEvent):
            if ev.event == "MEDIA_XOFF":
                c.xoff += 1
                self.xoff = True
                _rl.warning("xoff", f"[{call}] Asterisk's media queue is full (MEDIA_XOFF): frames are dropped until MEDIA_XON")
            elif ev.event == "MEDIA_XON":
                self.xoff = False
        elif isinstance(ev, DtmfEnd):
            c.dtmf += 1
        elif isinstance(ev, Status):
            self.status = ev
        elif isinstance(ev, ErrorEvent):
            c.errors += 1
            _rl.warning("error", f"[{call}] chan_websocket: {ev.error_text}")


class WebSocketTransport:
    name: Transport = "websocket"

    def __init__(self, config: AppConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.counters = WsCounters()
        self.tasks = OwnedTasks("websocket media")
        self.links: set[WebSocketLink] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._running = False
        self.port = config.websocket.port
        # client mode: channel id -> the connection that says it is that call's
        self._pending: dict[str, asyncio.Future[WebSocketLink]] = {}

    @property
    def cfg(self) -> WebSocketMediaConfig:
        return self.config.websocket

    async def start(self) -> None:
        if self.cfg.connection_type == "client":
            app = web.Application()
            app.router.add_get("/{tail:.*}", self._accept)
            self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            log.info("WebSocket media server listening on %s:%d", self.cfg.host, self.port)
        self._running = True

    async def stop(self) -> None:
        self._running = False
        for link in list(self.links):
            link.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.tasks.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def media_url(self, connection_id: str) -> str:
        a = self.config.asterisk
        scheme = "wss" if a.ari_scheme == "https" else "ws"
        return f"{scheme}://{a.host}:{a.ari_port}/media/{connection_id}"

    async def open(self, ari: AriClient, channel_id: str, app: str, token: str) -> tuple[Channel, MediaLink]:
        if not self._running:
            raise MediaSetupError("the WebSocket media transport is not running")
        if self.cfg.connection_type == "client":
            return await self._open_client(ari, channel_id, app)
        return await self._open_server(ari, channel_id, app)

    # ---- server mode: the engine connects to Asterisk's /media/ID
    async def _open_server(self, ari: AriClient, channel_id: str, app: str) -> tuple[Channel, MediaLink]:
        fmt = self.cfg.format
        ext = await ari.external_media(channel_id, app, "", fmt, transport="websocket", encapsulation="none", connection_type="server")
        conn_id = (ext.channelvars or {}).get("MEDIA_WEBSOCKET_CONNECTION_ID") or await ari.get_variable(ext.id, "MEDIA_WEBSOCKET_CONNECTION_ID")
        if not conn_id:
            raise MediaSetupError("Asterisk gave the WebSocket channel no MEDIA_WEBSOCKET_CONNECTION_ID")
        url = self.media_url(str(conn_id))
        a = self.config.asterisk
        timeout = self.cfg.connect_timeout_s
        try:
            ws = await asyncio.wait_for(self.session.ws_connect(
                url, protocols=("media",), headers={"Authorization": aiohttp.encode_basic_auth(a.ari_username, a.ari_password.get_secret_value())},
                max_msg_size=MAX_MSG_BYTES, autoping=True,
            ), timeout)
        except aiohttp.WSServerHandshakeError as e:
            raise MediaSetupError(f"Asterisk refused the media WebSocket {url}: {e.status} {e.message}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise MediaSetupError(f"media WebSocket {url}: {e.__class__.__name__}: {e}") from None
        except TimeoutError:
            raise MediaSetupError(f"media WebSocket {url}: no connection in {timeout:g} s") from None
        try:
            start = await self._media_start(ws, url, channel_id)
        except BaseException:
            await ws.close()
            raise
        link = self._new_link(ws, start, url)
        self.tasks.spawn(self._run(link))
        return ext, link

    async def _media_start(self, ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, where: str, channel_id: str) -> MediaStart:
        try:
            msg = await asyncio.wait_for(ws.receive(), self.cfg.connect_timeout_s)
        except TimeoutError:
            raise MediaSetupError(f"no MEDIA_START on the media WebSocket {where} in {self.cfg.connect_timeout_s:g} s") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise MediaSetupError(f"the media WebSocket {where} ended before MEDIA_START ({msg.type.name})")
        try:
            ev = parse_event(msg.data)
        except WsMediaProtocolError as e:
            raise MediaSetupError(f"bad MEDIA_START on {where}: {e}") from None
        if not isinstance(ev, MediaStart):
            raise MediaSetupError(f"the media WebSocket {where} began with {msg.data[:40]!r}, not MEDIA_START")
        if ev.format != self.cfg.format or ev.format not in FRAME_BYTES:
            raise MediaSetupError(f"Asterisk's media WebSocket is {ev.format}, {self.cfg.format} was asked")
        if ev.optimal_frame_size != FRAME_BYTES[ev.format] or ev.ptime != 20:
            raise MediaSetupError(f"unexpected framing: {ev.optimal_frame_size} bytes per {ev.ptime} ms")
        return ev

    def _new_link(self, ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse, start: MediaStart, where: str) -> WebSocketLink:
        link = WebSocketLink(self, ws, start, where)
        self.links.add(link)
        self.counters.connections_total += 1
        return link

    async def _run(self, link: WebSocketLink) -> None:
        try:
            await link.run()
        finally:
            self.links.discard(link)

    # ---- client mode: Asterisk connects to the engine
    async def _open_client(self, ari: AriClient, channel_id: str, app: str) -> tuple[Channel, MediaLink]:
        fut: asyncio.Future[WebSocketLink] = asyncio.get_running_loop().create_future()
        self._pending[channel_id] = fut
        try:
            ext = await ari.external_media(
                channel_id, app, self.cfg.client_connection, self.cfg.format, transport="websocket", encapsulation="none",
                connection_type="client", transport_data=f"v({CALL_PARAM}={channel_id})",
            )
            try:
                link = await asyncio.wait_for(asyncio.shield(fut), self.cfg.connect_timeout_s)
            except TimeoutError:
                raise MediaSetupError(
                    f"Asterisk did not connect to the engine's media WebSocket (port {self.port}, "
                    f"websocket_client.conf connection {self.cfg.client_connection!r}) in {self.cfg.connect_timeout_s:g} s"
                ) from None
        finally:
            self._pending.pop(channel_id, None)
            if not fut.done():
                fut.cancel()
        return ext, link

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("media",), max_msg_size=MAX_MSG_BYTES, autoping=True)
        await ws.prepare(request)
        where = f"{request.remote}:{request.transport.get_extra_info('peername', ('', 0))[1] if request.transport else 0}"
        try:
            start = await self._media_start(ws, where, "")
        except MediaSetupError as e:
            self.counters.malformed += 1
            _rl.warning("accept", f"media WebSocket from {where}: {e}")
            await ws.close()
            return ws
        # The call's channel: the URI parameter this engine put there, else MEDIA_START's channel_id.
        channel_id = request.query.get(CALL_PARAM) or start.channel_id
        fut = self._pending.get(channel_id)
        if fut is None or fut.done():
            self.counters.unknown += 1
            _rl.warning("unknown", f"media WebSocket from {where} for channel {channel_id!r}: no call is waiting for it")
            await ws.close()
            return ws
        link = self._new_link(ws, start, where)
        fut.set_result(link)
        # This handler reads for the link until the socket ends (aiohttp closes it on return).
        await self._run(link)
        return ws

    def status(self) -> TransportStatus:
        listening = f"{self.cfg.host}:{self.port}" if self.cfg.connection_type == "client" else self.media_url("*")
        return self.counters.status(self.name, listening if self._running else "", self._running, len(self.links))


