"""AudioSocket: Asterisk's TCP media (chan_audiosocket, app_audiosocket), served by the engine.

The engine listens (audiosocket.host/port); Asterisk connects once per call and sends the UUID
message first. ``open`` registers a fresh UUID, then makes the call's media channel, in one of two
forms (audiosocket.form):

- "channel": POST /channels/externalMedia with transport=tcp, encapsulation=audiosocket, data=UUID:
  chan_audiosocket connects while the request runs and sends the UUID when the channel is called
  (before or after the reply: the UUID is waited for either way);
- "dialplan": a Local channel (``Local/s@{dialplan_context}/n``) whose ;1 half enters the Stasis app
  (id: the media channel id) and whose ;2 half runs the site's ``AudioSocket(UUID,SERVER)`` line with
  the variables AIAGENT_AUDIOSOCKET_UUID and AIAGENT_AUDIOSOCKET_SERVER. app_audiosocket gives up
  after 2 s with no frame either way, so the link sends a frame of silence when a call has been
  quiet for a second.

With audiosocket.dialplan_calls a connection whose UUID no call waits for is a call of its own: the
site's dialplan runs ``AudioSocket(${UUID()},HOST:PORT)`` instead of Stasis (``on_stranger``, set by
engine/dialplan_calls.py); its link is made with ``dialplan=True``. Without it such a connection is
refused (a hangup message).

The connection is the call's ``AudioSocketLink`` (engine.media.MediaLink): audio messages in ->
``CallMedia.receive_stream`` (8 kHz), the pacer's u-law frames out as slin (or slin16) messages.
The socket's end (EOF, a hangup message, garbage) before the call's end ends the call through
``MediaOwner.media_lost``; a peer that stops reading has its frames dropped, never buffered without
bound, so it stalls neither the loop nor other calls.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from typing import Callable

from engine.ari.client import AriClient
from engine.ari.models import Channel
from engine.config import AppConfig, AudioSocketConfig, Transport
from engine.media import CallMedia
from engine.transports import MediaSetupError, StreamCounters, TransportStatus
from media import audiosocket as proto
from media.audio import FixedResampler, Resampler, ulaw_to_pcm16
from media.frames import FRAME_S, RATE
from runtime.clock import Clock, Timer
from runtime.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

# A peer whose unread bytes exceed this much audio is not reading: its frames are dropped.
SLOW_READER_S = 0.2
# ... and after this many frames dropped in a row the pacer is told the sends fail.
SLOW_READER_FAIL_FRAMES = 10
KEEPALIVE_S = 1.0  # dialplan form: app_audiosocket hangs up after 2 s with no frame either way
KEEPALIVE_TICK_S = KEEPALIVE_S / 4
UUID_WAIT_S = 5.0  # a connection must say its UUID this soon
# The kernel's send buffer per connection (Linux doubles it): with autotuning a peer that stops
# reading would take megabytes (minutes of audio) before the slow-reader bound above saw it.
SEND_BUFFER_BYTES = 32 * 1024


class _Conn(asyncio.Protocol):
    """One TCP connection from Asterisk: its UUID first, then its call's messages."""

    def __init__(self, server: AudioSocketTransport) -> None:
        self.server = server
        self.parser = proto.Parser()
        self.tcp: asyncio.Transport | None = None
        self.peer = "?"
        self.uuid: str | None = None
        self.link: AudioSocketLink | None = None
        self.closing = False  # we closed it (the call ended, or it was refused)
        self._uuid_timer: Timer | None = None

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tcp = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # 20 ms frames: no Nagle delay
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        s = self.server
        s.counters.connections_total += 1
        s.conns.add(self)
        self._uuid_timer = s.clock.call_later(UUID_WAIT_S, self._no_uuid)

    def data_received(self, data: bytes) -> None:
        s = self.server
        s.counters.bytes_in += len(data)
        if self.closing:
            return
        try:
            messages = self.parser.feed(data)
        except proto.Malformed as e:
            self._malformed(str(e))
            return
        for m in messages:
            if self.closing:
                return
            s.counters.messages_in += 1
            self._message(m)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self._cancel_uuid_timer()
        if self.closing:
            return
        self.closing = True
        why = f"the AudioSocket connection from {self.peer} was cut ({exc})" if exc else f"Asterisk closed the AudioSocket connection from {self.peer}"
        if self.link is not None:
            self.link.lost(why, cut=True)
        elif self.uuid is None:
            self.server.rl.log(logging.INFO, "as-early-eof", f"AudioSocket connection from {self.peer} closed before it sent its UUID")

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    # ---- messages
    def _message(self, m: proto.Message) -> None:
        if self.uuid is None:
            if m.kind != proto.KIND_UUID:
                self._malformed(f"first message is kind 0x{m.kind:02x}, not the UUID")
                return
            self._cancel_uuid_timer()
            try:
                self.uuid = m.uuid()
            except proto.Malformed as e:
                self._malformed(str(e))
                return
            self.server.matched(self)
            return
        link = self.link
        if m.is_audio:
            if link is not None:
                link.inbound(m)
        elif m.kind == proto.KIND_HANGUP:
            self.closing = True
            if link is not None:
                link.lost("Asterisk sent an AudioSocket hangup")
            self._close(hangup=False)
        elif m.kind == proto.KIND_DTMF:
            # The caller's keys reach a Stasis call as ARI's ChannelDtmfReceived; the bridge passes
            # the same digits here too: acting on both would act twice. A dialplan call (no Stasis,
            # maybe no ARI) takes them from here.
            self.server.counters.dtmf += 1
            digit = m.payload[:1].decode("ascii", "replace")
            if link is not None and link.on_dtmf is not None and digit:
                link.on_dtmf(digit)
            else:
                log.debug("AudioSocket %s: DTMF %r (taken from ARI)", self.uuid, digit)
        elif m.kind == proto.KIND_ERROR:
            self.server.rl.warning("as-error", f"AudioSocket {self.uuid} from {self.peer}: Asterisk reports an error ({m.payload[:64]!r})")
        else:  # a second UUID
            self._malformed(f"unexpected message kind 0x{m.kind:02x}")

    def _malformed(self, why: str) -> None:
        s = self.server
        s.counters.malformed += 1
        who = f"call {self.link.call_id}" if self.link is not None and self.link.call_id else f"UUID {self.uuid or '?'}"
        self.server.rl.warning("as-malformed", f"AudioSocket connection from {self.peer} ({who}): malformed stream ({why}): closed")
        self.closing = True
        if self.link is not None:
            self.link.malformed()
            self.link.lost(f"malformed AudioSocket stream ({why})")
        self._close(hangup=False, abort=True)

    def _no_uuid(self) -> None:
        self._uuid_timer = None
        if self.uuid is None and not self.closing:
            self.server.counters.unknown += 1
            self.server.rl.warning("as-no-uuid", f"AudioSocket connection from {self.peer} sent no UUID within {UUID_WAIT_S:.0f} s: closed")
            self.closing = True
            self._close(hangup=False, abort=True)

    def _cancel_uuid_timer(self) -> None:
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
            self._uuid_timer = None

    # ---- out
    def write(self, data: bytes) -> None:
        if self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(data)
            self.server.counters.messages_out += 1
            self.server.counters.bytes_out += len(data)

    @property
    def unsent(self) -> int:
        return self.tcp.get_write_buffer_size() if self.tcp is not None else 0

    def _close(self, hangup: bool, abort: bool = False) -> None:
        self.closing = True
        tcp = self.tcp
        if tcp is None or tcp.is_closing():
            return
        if hangup and not abort:
            self.write(proto.encode_hangup())
        if abort or self.unsent > self.server.slow_bytes:
            tcp.abort()  # a peer that does not read would hold a graceful close forever
        else:
            tcp.close()


class AudioSocketLink:
    """A call's AudioSocket connection (engine.media.MediaLink)."""

    transport = "audiosocket"

    def __init__(self, server: AudioSocketTransport, conn: _Conn, kind_out: int, dialplan: bool = False) -> None:
        self.server = server
        self.conn = conn
        conn.link = self
        # dialplan: the site's own AudioSocket() line, no bridge behind it: nothing to fall back to
        # (file playback needs a bridge), so frames a slow peer does not read are dropped, not failed.
        self.dialplan = dialplan
        self.where = f"dialplan AudioSocket() from {conn.peer}/tcp" if dialplan else f"{conn.peer}/tcp"
        self.on_dtmf: Callable[[str], None] | None = None  # a dialplan call's keys
        self.caller_gone = False  # a dialplan call's socket ended by Asterisk: its caller hung up
        self.uuid = conn.uuid or ""
        self.call_id = ""
        self._kind_out = kind_out
        self._up = FixedResampler(RATE, proto.AUDIO_RATES[kind_out]) if kind_out != proto.KIND_SLIN else None
        self._down: dict[int, Resampler] = {}
        self._media: CallMedia | None = None
        self._slow_run = 0
        self._lost: str | None = None
        self._closed = False
        self.last_activity = server.clock.now()

    # ---- MediaLink
    def attach(self, media: CallMedia) -> None:
        self._media = media
        self.call_id = media.session.call_id
        if self._lost is not None:
            # Lost during setup, before the call could hear of it: told now, off this stack.
            asyncio.get_running_loop().call_soon(self._tell_lost, self._lost)

    def send_frame(self, media: CallMedia, payload: bytes, marker: bool) -> bool:
        conn = self.conn
        if self._closed or conn.closing:
            return self.dialplan  # a dialplan call is ending: its frames go nowhere, no fallback to files
        pcm = ulaw_to_pcm16(payload)
        if self._up is not None:
            pcm = self._up.process(pcm)
        if conn.unsent > self.server.slow_bytes:
            # The peer is not reading: this frame is dropped, not queued behind the others.
            self.server.counters.slow_reader += 1
            self._slow_run += 1
            if self._slow_run == 1 or self._slow_run % 250 == 0:
                self.server.rl.warning("as-slow", f"[{self.call_id}] AudioSocket peer {conn.peer} is not reading: agent audio dropped ({conn.unsent} bytes unsent)")
            return self.dialplan or self._slow_run < SLOW_READER_FAIL_FRAMES
        self._slow_run = 0
        if pcm:
            conn.write(proto.encode(self._kind_out, pcm))
        self.last_activity = self.server.clock.now()
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._media = None
        self.on_dtmf = None
        self.server.links.discard(self)
        self.conn._close(hangup=True)

    # ---- from the connection
    def inbound(self, m: proto.Message) -> None:
        self.last_activity = self.server.clock.now()
        media = self._media
        if media is None:
            return  # before the call's media is up (or after it ended): nobody to hear it
        data = m.payload
        if len(data) % 2:
            media.session.stream_in.partial += 1
            data = data[:-1]
        if m.kind == proto.KIND_SLIN:
            pcm8 = data
        else:
            rs = self._down.get(m.kind)
            if rs is None:
                rs = self._down[m.kind] = Resampler(m.rate, RATE)
            pcm8 = rs.process(data)
        media.receive_stream(pcm8, self.server.clock.now(), samples=len(data) // 2, nbytes=len(m.payload))

    def malformed(self) -> None:
        if self._media is not None:
            self._media.malformed()

    def lost(self, why: str, cut: bool = False) -> None:
        """The connection ended or must end before the call let it go. ``cut``: it just ended (an
        EOF, a reset), counted if the call was still on (a teardown's own deletes end it too)."""
        if self._closed or self._lost is not None:
            return
        media = self._media
        if cut and (media is None or media.owner is not None):
            self.server.counters.cut += 1
        if self.dialplan and cut:
            self.caller_gone = True  # the socket is the caller's own channel's: it hung up
            why = f"the caller hung up ({why})"
        self._lost = why
        self.server.links.discard(self)
        if self._media is not None:
            self._tell_lost(why)

    def _tell_lost(self, why: str) -> None:
        media = self._media
        if media is not None and media.owner is not None and not self._closed:
            media.owner.media_lost(why)

    def keepalive(self, now: float) -> None:
        if now - self.last_activity >= KEEPALIVE_S and not self._closed and not self.conn.closing:
            self.silence()
            self.last_activity = now

    def silence(self) -> None:
        """One frame of silence to Asterisk."""
        self.conn.write(proto.encode(self._kind_out, bytes(int(proto.AUDIO_RATES[self._kind_out] * FRAME_S) * 2)))

    def flush(self) -> None:
        pass  # chan_audiosocket writes each message to the channel as it comes: nothing held there

    def hangup(self) -> None:
        """The call is ending: the hangup message before ARI deletes the channel. chan_audiosocket's
        read, run whenever its channel wakes (a hangup request too, not only the socket), waits for
        the next message with the channel locked: a DELETE with nothing on its way hangs (seen on
        Asterisk 22.10.1: DELETEs timing out after 5 s under load, calls stuck)."""
        self.close()


class AudioSocketTransport:
    name: Transport = "audiosocket"

    def __init__(self, config: AppConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.counters = StreamCounters()
        self.rl = RateLimitedLog(log)  # this server's bad input: one line per kind per 10 s
        self.conns: set[_Conn] = set()
        self.links: set[AudioSocketLink] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._waiting: dict[str, asyncio.Future[_Conn]] = {}
        self._keepalive: Timer | None = None
        # audiosocket.dialplan_calls: takes a connection no call waits for as a new call (its link).
        self.on_stranger: Callable[[AudioSocketLink], None] | None = None

    @property
    def cfg(self) -> AudioSocketConfig:
        return self.config.audiosocket

    @property
    def slow_bytes(self) -> int:
        """Unsent bytes that mean the peer is not reading: SLOW_READER_S of the wire's audio."""
        rate = 16000 if self.cfg.format == "slin16" and self.cfg.form == "channel" else RATE
        return int(rate * 2 * SLOW_READER_S)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), self.cfg.host, self.cfg.port)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0 in tests: the OS picks one
        self._schedule_keepalive()
        log.info("AudioSocket server listening on %s:%d/tcp (%s form), Asterisk connects to %s", self.cfg.host, self.port, self.cfg.form, self.external_host)

    async def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self.links):
            link.close()
        for conn in list(self.conns):
            conn.closing = True
            if conn.tcp is not None:
                conn.tcp.abort()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(MediaSetupError("the AudioSocket server stopped"))
        if server is not None:
            await server.wait_closed()

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def external_host(self) -> str:
        return f"{self.cfg.advertise_host or self.cfg.host}:{self.port}"

    # ---- connections
    def matched(self, conn: _Conn) -> None:
        """A connection said its UUID: it is the call's that waits for it, or nobody's."""
        fut = self._waiting.get(conn.uuid or "")
        if (fut is None or fut.done()) and self.cfg.dialplan_calls and self.on_stranger is not None:
            link = AudioSocketLink(self, conn, proto.KIND_SLIN, dialplan=True)  # AudioSocket() speaks 8 kHz slin
            self.links.add(link)
            self.on_stranger(link)
            return
        if fut is None or fut.done():
            self.counters.unknown += 1
            self.rl.warning("as-unknown", f"AudioSocket connection from {conn.peer} with UUID {conn.uuid}: no call waits for it: closed")
            conn._close(hangup=True)
            return
        fut.set_result(conn)

    def _schedule_keepalive(self) -> None:
        if self.cfg.form == "dialplan" or self.cfg.dialplan_calls:
            self._keepalive = self.clock.call_later(KEEPALIVE_TICK_S, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        now = self.clock.now()
        for link in list(self.links):
            try:
                link.keepalive(now)
            except Exception as e:  # one call's socket: never the others' keepalives
                log.error("AudioSocket keepalive of %s failed: %s", link.call_id, e, exc_info=e)
        self._schedule_keepalive()

    # ---- MediaTransport
    async def open(self, ari: AriClient, channel_id: str, app: str, token: str) -> tuple[Channel, AudioSocketLink]:
        if not self.running:
            raise MediaSetupError("the AudioSocket server is not running")
        cfg = self.cfg
        uid = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Conn] = loop.create_future()
        # Registered before the channel is made: Asterisk may connect before its reply comes.
        self._waiting[uid] = fut
        timer: Timer | None = None
        try:
            if cfg.form == "channel":
                ch = await ari.external_media(channel_id, app, self.external_host, cfg.format, transport="tcp", encapsulation="audiosocket", data=uid)
                kind_out = proto.KIND_FOR_FORMAT[cfg.format]
            else:
                body = await ari.request(
                    "POST", "/channels",
                    {"endpoint": f"Local/s@{cfg.dialplan_context}/n", "app": app, "channelId": channel_id, "formats": "slin", "timeout": 30},
                    json={"variables": {"AIAGENT_AUDIOSOCKET_UUID": uid, "AIAGENT_AUDIOSOCKET_SERVER": self.external_host}},
                )
                ch = Channel.model_validate(body)
                kind_out = proto.KIND_SLIN  # AudioSocket() speaks 8 kHz slin whatever the channel's format

            def timeout() -> None:
                if not fut.done():
                    fut.set_exception(TimeoutError())

            timer = self.clock.call_later(cfg.connect_timeout_s, timeout)
            try:
                conn = await fut
            except TimeoutError:
                where = "its ExternalMedia channel" if cfg.form == "channel" else f"the dialplan's AudioSocket() in [{cfg.dialplan_context}]"
                raise MediaSetupError(
                    f"Asterisk did not connect to the AudioSocket server at {self.external_host} within {cfg.connect_timeout_s:g} s "
                    f"(UUID {uid}, {where}): can it reach that address (audiosocket.advertise_host)?"
                ) from None
        except BaseException:
            # Cancelled (the call ended meanwhile) or failed after the connection came: it goes too.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result()._close(hangup=True)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(uid, None)
        if conn.closing:
            raise MediaSetupError(f"the AudioSocket connection from {conn.peer} ended before the call's media started")
        link = AudioSocketLink(self, conn, kind_out)
        if cfg.form == "channel":
            # The channel's ANSWER wakes its read, which then waits for a message (see hangup):
            # one now, so that the bridge carries the caller's audio before the agent first speaks.
            link.silence()
        self.links.add(link)
        return ch, link

    def status(self) -> TransportStatus:
        listening = f"{self.cfg.host}:{self.port}/tcp" if self._server is not None else ""
        return self.counters.status(self.name, listening, self.running, len(self.conns))
