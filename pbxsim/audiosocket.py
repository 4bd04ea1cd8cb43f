"""chan_audiosocket's ExternalMedia channel (POST /channels/externalMedia, transport=tcp,
encapsulation=audiosocket), as Asterisk 22.10.1's channels/chan_audiosocket.c and
res/res_audiosocket.c do it:

- it connects to external_host while the request runs (a refused connection fails the request);
  the channel is ``AudioSocket/HOST:PORT-UUID`` with AUDIOSOCKET_UUID and AUDIOSOCKET_SERVICE set;
- when the channel is called it sends the UUID message (kind 0x01, 16 bytes), then every frame the
  bridge writes to it as one audio message (kind 0x10 for slin, 0x12 for slin16; 20 ms each), and
  nothing while the bridge sends it nothing (a two-party bridge whose caller is silent);
- what the engine sends is read a message at a time and written into the bridge, whatever its size;
- its hangup closes the socket, with no hangup message; an EOF, a hangup message (kind 0x00) or a
  message it cannot read (an unknown kind, a zero length) from the engine hangs its channel up.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from typing import Callable, ClassVar

from media import audiosocket as proto
from media.audio import FixedResampler, Resampler, audioop
from media.frames import RATE
from pbxsim.media import ExternalMediaEndpoint, MediaClock, ast_lin2mu

log = logging.getLogger("pbxsim")


class AudioSocketEndpoint(ExternalMediaEndpoint, asyncio.Protocol):  # type: ignore[misc]
    """One AudioSocket channel's TCP connection to the engine. Kept an ExternalMediaEndpoint so the
    PBX's bridges, releases and call reports treat it as they do the RTP one (``packets_sent``:
    audio messages to the engine, ``packets_received``: audio messages from it)."""

    is_agent = True
    # Faults for tests: a channel that connects but never sends its UUID; a socket receive buffer
    # this small (0: the kernel's), so that a channel that stops reading (pause_reading) soon
    # leaves the engine's frames unsent.
    send_uuid: ClassVar[bool] = True
    receive_buffer: ClassVar[int] = 0

    def __init__(self, remote: tuple[str, int], uuid: str, fmt: str, clock: MediaClock) -> None:
        super().__init__(remote, clock)
        self.uuid = uuid
        self.fmt = fmt
        self.kind_out = proto.KIND_FOR_FORMAT[fmt]
        self._up = FixedResampler(RATE, proto.AUDIO_RATES[self.kind_out]) if self.kind_out != proto.KIND_SLIN else None
        self._down: dict[int, Resampler] = {}
        self.tcp: asyncio.Transport | None = None
        self.parser = proto.Parser()
        self.called = False
        self.closed_by: str | None = None  # "engine-eof", "engine-hangup", "engine-malformed", "channel"
        self.kinds_in: Counter[int] = Counter()  # what the engine sent, by kind
        self.sizes_in: Counter[int] = Counter()  # audio payload sizes from the engine
        self.tx_log: list[tuple[float, int, int]] = []  # (time, kind, length) of each message sent
        self.hangup_channel: Callable[[str], None] = lambda why: None  # set by ExternalMedia

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as res_audiosocket does
            if self.receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, self.remote), 2.0)  # MAX_CONNECT_TIMEOUT_MSEC
        except BaseException:
            sock.close()
            raise
        await loop.create_connection(lambda: self, sock=sock)

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tcp = transport
        self.local = transport.get_extra_info("sockname")[:2]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except proto.Malformed as e:
            # res_audiosocket: "Received AudioSocket message other than hangup or audio": NULL read, hangup.
            log.error("AudioSocket %s: %s: hanging up", self.uuid, e)
            self._engine_ended("engine-malformed")
            return
        for m in messages:
            self.kinds_in[m.kind] += 1
            if m.kind == proto.KIND_HANGUP:
                self._engine_ended("engine-hangup")
                return
            if not m.is_audio:
                log.error("AudioSocket %s: message kind 0x%02x from the server: hanging up", self.uuid, m.kind)
                self._engine_ended("engine-malformed")
                return
            self.sizes_in[len(m.payload)] += 1
            self.packets_received += 1
            self.rx_log.append((time.monotonic(), 0, 0, False, 0))
            self._into_bridge(m)

    def eof_received(self) -> bool | None:
        self._engine_ended("engine-eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tcp is not None:
            self.tcp = None
            self._engine_ended("engine-eof")

    def _engine_ended(self, how: str) -> None:
        if self.closed_by is None:
            self.closed_by = how
            self.hangup_channel(how)
        self.close()

    def _into_bridge(self, m: proto.Message) -> None:
        pcm = m.payload[: len(m.payload) // 2 * 2]
        if m.kind != proto.KIND_SLIN:
            rs = self._down.get(m.kind)
            if rs is None:
                rs = self._down[m.kind] = Resampler(m.rate, RATE)
            pcm = rs.process(pcm)
        if self.bridge is not None and pcm:
            self.bridge.on_frame(self, ast_lin2mu(pcm), True, self.clock.tick)

    # ---- the channel
    def call(self) -> None:
        """The channel is called (audiosocket_call): the UUID goes out."""
        self.called = True
        if self.send_uuid:
            self._send(proto.encode_uuid(self.uuid))

    def deliver(self, payload: bytes, agent: bool, tick: int) -> None:
        if self.tcp is None or not self.called:
            return
        pcm = audioop.ulaw2lin(payload, 2)
        if self._up is not None:
            pcm = self._up.process(pcm)
        if pcm:
            self._send(proto.encode(self.kind_out, pcm))
            self.packets_sent += 1

    def _send(self, data: bytes) -> None:
        if self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(data)
            self.tx_log.append((time.monotonic(), data[0], len(data) - proto.HEADER))

    def close(self) -> None:
        """The channel hung up (audiosocket_hangup): the socket closes, no hangup message."""
        if self.closed_by is None:
            self.closed_by = "channel"
        tcp, self.tcp = self.tcp, None
        if tcp is not None:
            tcp.close()
