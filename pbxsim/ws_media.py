"""chan_websocket's ExternalMedia channel (Asterisk 22), server mode: the app connects to the PBX's
HTTP server at /media/<connection id> (sub-protocol ``media``, no auth: ARI's credentials are
ARI's), gets MEDIA_START, then BINARY frames of the bridge's audio in the channel's format, and
sends its own, which are cut into ptime frames, queued (1000 at most, MEDIA_XOFF at 900,
MEDIA_XON below 800) and played one per 20 ms. The channel answers and enters Stasis when the
WebSocket connects (auto-answer), not before. A HANGUP command or a closed socket hangs the channel
up; a channel hung up closes the socket (code 1000), as chan_websocket's webchan_hangup does.

The endpoint is an ``ExternalMediaEndpoint`` to the rest of the simulator (bridges, reports,
release): ``packets_sent`` counts frames to the app, ``packets_received`` frames played from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import uuid
from collections import deque
from typing import TYPE_CHECKING, Callable

import numpy as np
from aiohttp import WSMsgType, web

from media.audio import FixedResampler, Resampler, ulaw_to_pcm16
from media.frames import FRAME_S
from media.ws_media import (
    FRAME_BYTES, MAX_TEXT_MESSAGE_LEN, PTIME_MS, QUEUE_LENGTH_MAX, QUEUE_LENGTH_XOFF_LEVEL, QUEUE_LENGTH_XON_LEVEL, Correlated,
    ErrorEvent, FlowControl, FlowEvent, MediaStart, MsgFormat, Rechunker, Status, WsMediaProtocolError, format_event, parse_command,
)
from pbxsim.media import ExternalMediaEndpoint, MediaClock, ast_lin2mu

if TYPE_CHECKING:
    from pbxsim.ari.model import SimChannel

log = logging.getLogger("pbxsim")

HangUp = Callable[["SimChannel", str, int], None]
CAUSE_NORMAL = 16
CAUSE_NETWORK_OUT_OF_ORDER = 38


class WsMediaEndpoint(ExternalMediaEndpoint):
    is_agent = True

    def __init__(self, *, connection_id: str, fmt: str, clock: MediaClock, msg_format: MsgFormat = "plain-text") -> None:
        super().__init__(("", 0), clock)
        self.connection_id = connection_id
        self.fmt = fmt
        self.msg_format: MsgFormat = msg_format
        self.frame_bytes = FRAME_BYTES[fmt]
        # chan_websocket names it after the dial string's connection id ("INCOMING" in server mode) and its object's address.
        self.channel_name = f"WebSocket/INCOMING/0x7f{random.getrandbits(40):010x}"
        self.channel: SimChannel | None = None
        self.ws: web.WebSocketResponse | None = None
        self.queue: deque[bytes | str] = deque()  # frames from the app (bytes) and option events to send in order (str)
        self.queue_length = 0  # frames only, as chan_websocket counts
        self.flow = FlowControl()
        self.rechunker = Rechunker(self.frame_bytes)
        self.paused = False
        self.report_drained = False
        self.bulk = False
        self.stalled = False  # fault: the channel is not read (its queue fills)
        self.texts_in: list[str] = []
        self.commands: list[str] = []
        self.events_out: list[str] = []
        self.garbage = 0
        self.ignored_full = 0  # BINARY messages ignored whole with the queue at 1000
        self.close_code: int | None = None  # the code the app closed with
        self.ended_by: str | None = None  # "app-close", "app-hangup", "channel", "cut"
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.on_connect: Callable[[WsMediaEndpoint], object] | None = None
        self.hang_up: Callable[[WsMediaEndpoint, int], None] | None = None
        self._out: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self._tick: asyncio.TimerHandle | None = None
        self._next = 0.0
        self._up = FixedResampler(8000, 16000) if fmt == "slin16" else None  # a 640-byte frame per 20 ms, as Asterisk's translator
        self._down = Resampler(16000, 8000) if fmt == "slin16" else None

    @property
    def channel_id(self) -> str:
        return self.channel.id if self.channel is not None else ""

    def media_start(self) -> MediaStart:
        return MediaStart(
            connection_id=self.connection_id, channel=self.channel_name, channel_id=self.channel_id, format=self.fmt,
            optimal_frame_size=self.frame_bytes, ptime=PTIME_MS, channel_variables=dict(self.channel.vars) if self.channel else {},
        )

    # ---- the bridge's audio to the app
    def deliver(self, payload: bytes, agent: bool, tick: int) -> None:
        if self.ws is None or self.ws.closed:
            return
        if self.fmt == "ulaw":
            frame = payload
        else:
            frame = ulaw_to_pcm16(payload)
            if self._up is not None:
                frame = self._up.process(frame)
        self._out.put_nowait(frame)
        self.packets_sent += 1

    def _event(self, text: str) -> None:
        self.events_out.append(text)
        self._out.put_nowait(text)

    # ---- the app's frames: queued, one played per 20 ms
    def _binary(self, data: bytes) -> None:
        if self.queue_length >= QUEUE_LENGTH_MAX:
            self.ignored_full += 1
            return
        for frame in self.rechunker.frames(data):
            self.queue.append(frame)
            self.queue_length += 1
            if self.flow.queued(self.queue_length):
                self._event(format_event(FlowEvent("MEDIA_XOFF", self.channel_id), self.msg_format))

    def _play_tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._tick = loop.call_at(self._next, self._play_tick)
        self._next += FRAME_S
        if self.paused or self.stalled:
            return
        if self.flow.dequeued(self.queue_length):
            self._event(format_event(FlowEvent("MEDIA_XON", self.channel_id), self.msg_format))
        while self.queue and isinstance(self.queue[0], str):  # option events take no timeslot
            self._event(str(self.queue.popleft()))
        if not self.queue:
            if self.report_drained:
                self.report_drained = False
                self._event(format_event(FlowEvent("QUEUE_DRAINED", self.channel_id), self.msg_format))
            return
        frame = self.queue.popleft()
        assert isinstance(frame, bytes)
        self.queue_length -= 1
        self.packets_received += 1
        if self.bridge is not None:
            self.bridge.on_frame(self, self._to_ulaw(frame), True, self.clock.tick)

    def _to_ulaw(self, frame: bytes) -> bytes:
        if self.fmt == "ulaw":
            return frame
        pcm = self._down.process(frame) if self._down is not None else frame
        return ast_lin2mu(np.frombuffer(pcm, dtype=np.int16))

    # ---- the app's commands (chan_websocket's handle_command)
    def _text(self, text: str) -> None:
        self.texts_in.append(text)
        if not text or len(text.encode()) > MAX_TEXT_MESSAGE_LEN:
            self.garbage += 1
            return
        try:
            cmd = parse_command(text, self.msg_format)
        except WsMediaProtocolError as e:
            self.garbage += 1
            if self.msg_format == "json":
                self._event(format_event(ErrorEvent(str(e), self.channel_id), "json"))
            else:
                log.warning("%s: WebSocket %s command unknown", self.channel_name, text.split(" ")[0][:40])
            return
        self.commands.append(cmd.name)
        name = cmd.name
        if name == "HANGUP":
            self.ended_by = self.ended_by or "app-hangup"
            if self.hang_up is not None:
                self.hang_up(self, CAUSE_NORMAL)
        elif name == "FLUSH_MEDIA":
            self.queue.clear()
            self.queue_length = 0
            self.bulk = False
        elif name == "PAUSE_MEDIA":
            self.paused = True
        elif name == "CONTINUE_MEDIA":
            self.paused = False
        elif name == "REPORT_QUEUE_DRAINED":
            self.report_drained = True
        elif name == "START_MEDIA_BUFFERING":
            self.bulk = True
        elif name == "STOP_MEDIA_BUFFERING":
            self.bulk = False
            self.queue.append(format_event(Correlated("MEDIA_BUFFERING_COMPLETED", cmd.correlation_id or "", self.channel_id), self.msg_format))
        elif name == "MARK_MEDIA":
            self.queue.append(format_event(Correlated("MEDIA_MARK_PROCESSED", cmd.correlation_id or "", self.channel_id), self.msg_format))
        elif name == "GET_STATUS":
            self._event(format_event(Status(
                channel_id=self.channel_id, queue_length=self.queue_length, xon_level=QUEUE_LENGTH_XON_LEVEL,
                xoff_level=QUEUE_LENGTH_XOFF_LEVEL, queue_full=self.flow.full, bulk_media=self.bulk, media_paused=self.paused,
            ), self.msg_format))

    # ---- the socket
    async def serve(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._event(format_event(self.media_start(), self.msg_format))
        sender = asyncio.create_task(self._send_loop(ws))
        loop = asyncio.get_running_loop()
        self._next = loop.time() + FRAME_S
        self._tick = loop.call_at(self._next, self._play_tick)
        self._next += FRAME_S
        self.connected.set()
        if self.on_connect is not None:
            self.on_connect(self)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    self._binary(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    self._text(msg.data)
            self.close_code = ws.close_code
        finally:
            if self._tick is not None:
                self._tick.cancel()
            self._out.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(sender, 2.0)
            self.closed.set()
            if self.ended_by is None:
                self.ended_by = "app-close"
            # chan_websocket: a read error or a CLOSE from the app hangs the channel up.
            if self.hang_up is not None:
                self.hang_up(self, CAUSE_NORMAL)

    async def _send_loop(self, ws: web.WebSocketResponse) -> None:
        while (item := await self._out.get()) is not None:
            if ws.closed:
                continue
            try:
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    await ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return

    def close(self) -> None:
        """The channel is gone: the socket closes with 1000 (webchan_hangup)."""
        if self.ended_by is None:
            self.ended_by = "channel"
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(asyncio.QueueFull):
                self._out.put_nowait(None)
            ws = self.ws
            asyncio.get_running_loop().create_task(_close(ws))

    # ---- faults
    def send_text(self, text: str) -> None:
        self._out.put_nowait(text)

    def send_binary(self, data: bytes) -> None:
        self._out.put_nowait(data)

    def send_huge_header(self, length: int = 100 * 1024 * 1024) -> None:
        """The header of a BINARY frame of ``length`` bytes and a few bytes of it: what a reader
        with a size limit must refuse without buffering."""
        tr = self.ws._req.transport if self.ws is not None and self.ws._req is not None else None  # noqa: SLF001
        if tr is not None:
            tr.write(b"\x82\x7f" + struct.pack("!Q", length) + b"\x00" * 64)

    def cut(self) -> None:
        """The TCP connection dies: no CLOSE frame."""
        self.ended_by = "cut"
        tr = self.ws._req.transport if self.ws is not None and self.ws._req is not None else None  # noqa: SLF001
        if tr is not None:
            tr.abort()

    def force_flow(self, event: str) -> None:
        self._event(format_event(FlowEvent(event, self.channel_id), self.msg_format))  # type: ignore[arg-type]


async def _close(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=1000), 2.0)


class WsMediaServer:
    """The PBX's /media/<connection id> route and its channels' endpoints."""

    def __init__(self) -> None:
        self.by_connection: dict[str, WsMediaEndpoint] = {}
        self.refuse: int | None = None  # fault: answer every upgrade with this HTTP status
        self.refused = 0

    def new(self, fmt: str, clock: MediaClock, msg_format: MsgFormat = "plain-text") -> WsMediaEndpoint:
        ep = WsMediaEndpoint(connection_id=str(uuid.uuid4()), fmt=fmt, clock=clock, msg_format=msg_format)
        self.by_connection[ep.connection_id] = ep
        return ep

    def forget(self, ep: WsMediaEndpoint) -> None:
        self.by_connection.pop(ep.connection_id, None)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        conn = request.match_info["connection_id"]
        if self.refuse is not None:
            self.refused += 1
            return web.Response(status=self.refuse, text="refused (simulated fault)")
        ep = self.by_connection.get(conn)
        if ep is None:
            return web.Response(status=404, text="WebSocket instance not found")
        if ep.ws is not None:
            return web.Response(status=409, text="Another websocket connection exists for this connection id")
        ws = web.WebSocketResponse(protocols=("media",), autoping=True, max_msg_size=0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="not a WebSocket upgrade")
        await ws.prepare(request)
        await ep.serve(ws)
        return ws
