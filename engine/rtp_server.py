"""The engine's single UDP socket for ExternalMedia RTP: receive, route by source address, send.

Asterisk gives every ExternalMedia channel its own source port and only accepts the agent's RTP
from the socket it sends to (strict RTP), so one socket serves every call, and a packet's source
address (the call's UNICASTRTP_LOCAL_ADDRESS/PORT) says which call it belongs to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from runtime.clock import Clock, LoopClock
from engine.media import CallMedia, MediaTimings
from runtime.ratelimit import RateLimitedLog
from media.rtp import PT_ULAW, RtpPacket, RtpParseError, build_packet
from media.rtp_stats import DUPLICATE, LATE, PROBATION

log = logging.getLogger(__name__)

ENDED_GRACE_S = 2.0  # a call's address stays known this long after it ended (packets in flight)
_WARN_INTERVAL_S = 10.0
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(slots=True, kw_only=True)
class RtpServerCounters:
    packets_in: int = 0  # every datagram received
    packets_routed: int = 0  # valid packets of a known call
    foreign: int = 0  # from an address that belongs to no call
    after_end: int = 0  # from a call that just ended: already on their way when its route went
    malformed: Counter[str] = field(default_factory=Counter)  # by reason
    unsupported_payload: int = 0
    duplicates: int = 0
    late: int = 0
    probation: int = 0  # a new SSRC or a large sequence jump not (yet) confirmed: not passed on
    packets_out: int = 0
    send_errors: int = 0
    internal_errors: int = 0  # packets lost to a failure in the engine's own code


ErrorSink = Callable[[str, BaseException], None]


def _log_error(component: str, e: BaseException) -> None:
    log.error("%s: %s", component, e, exc_info=e)


class RtpServer(asyncio.DatagramProtocol):
    def __init__(
        self, host: str, port: int, *, timings: MediaTimings | None = None, on_error: ErrorSink = _log_error,
        receive_buffer_bytes: int = 0, clock: Clock | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.receive_buffer_wanted = receive_buffer_bytes
        self.receive_buffer_bytes = 0  # what the kernel granted
        # A failure inside the receive path: the packet is lost, never the socket; the owner (the engine's supervisor) logs and shows it.
        self.on_error = on_error
        self.timings = timings or MediaTimings()
        self.counters = RtpServerCounters()
        self.routes: dict[tuple[str, int], CallMedia] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.clock = clock or LoopClock()
        self._drops = KernelDrops(self.clock)
        self._ended: dict[tuple[str, int], float] = {}  # addresses of calls just ended -> until when
        self._rl = RateLimitedLog(log, _WARN_INTERVAL_S)

    # -- lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        sock = self.transport.get_extra_info("socket")
        self.port = sock.getsockname()[1]  # port 0 in tests: the OS picks one
        self.receive_buffer_bytes = _size_receive_buffer(sock, self.receive_buffer_wanted)
        self._drops.watch(sock.fileno())
        log.info("RTP server listening on %s:%d/udp (receive buffer %d KiB)", self.host, self.port, self.receive_buffer_bytes // 1024)

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped because the socket's buffer was full (None: not known)."""
        return self._drops.read()

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    @property
    def running(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # -- routing
    def register(self, media: CallMedia) -> None:
        assert media.remote is not None
        self._ended.pop(media.remote, None)
        other = self.routes.get(media.remote)
        if other is not None and other is not media:
            raise ValueError(f"RTP address {media.remote} already belongs to call {other.session.call_id}")
        self.routes[media.remote] = media

    def unregister(self, media: CallMedia) -> None:
        if media.remote is not None and self.routes.get(media.remote) is media:
            del self.routes[media.remote]
            now = self.clock.now()
            self._ended = {a: until for a, until in self._ended.items() if until > now}
            self._ended[media.remote] = now + ENDED_GRACE_S

    # -- inbound (hot path: 50 packets/s per call)
    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._receive(data, addr)
        except Exception as e:
            self.counters.internal_errors += 1
            self.on_error("rtp-receive", e)

    def _receive(self, data: bytes, addr: tuple[str, int]) -> None:
        t0 = time.perf_counter()
        c = self.counters
        c.packets_in += 1
        media = self.routes.get(addr[:2])
        if media is None:
            until = self._ended.get(addr[:2])
            if until is not None and self.clock.now() < until:
                c.after_end += 1  # the bridge's last frames, sent as the channel went: not news
                return
            c.foreign += 1
            self._warn("foreign", f"dropped RTP from {addr[0]}:{addr[1]}: no call has that address")
            return
        call_id = media.session.call_id
        try:
            pkt = RtpPacket.parse(data)
        except RtpParseError as e:
            c.malformed[e.reason] += 1
            media.malformed()
            self._warn("malformed", f"[{call_id}] dropped malformed RTP from {addr[0]}:{addr[1]}: {e}")
            return
        if pkt.payload_type != PT_ULAW:
            c.unsupported_payload += 1
            self._warn("pt", f"[{call_id}] dropped RTP with payload type {pkt.payload_type} (expected 0, ulaw)")
            return
        verdict = media.receive(pkt, self.clock.now())
        if verdict == DUPLICATE:
            c.duplicates += 1
        elif verdict == PROBATION:
            c.probation += 1
        elif verdict == LATE:
            c.late += 1
        else:
            c.packets_routed += 1
            self.timings.inbound.add(time.perf_counter() - t0)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a channel Asterisk already tore down: not fatal.
        self.counters.send_errors += 1
        self._warn("icmp", f"RTP socket error: {exc}")

    def _warn(self, kind: str, message: str) -> None:
        self._rl.warning(kind, message)

    # -- outbound
    def link(self, remote: tuple[str, int]) -> RtpLink:
        return RtpLink(self, remote)

    def send(self, media: CallMedia, payload: bytes, marker: bool) -> bool:
        if self.transport is None:
            return False
        media.seq = (media.seq + 1) & 0xFFFF
        try:
            self.transport.sendto(build_packet(PT_ULAW, media.seq, media.ts, media.ssrc, payload, marker), media.remote)
        except OSError as e:
            self.counters.send_errors += 1
            self._warn("send", f"[{media.session.call_id}] RTP send failed: {e}")
            return False
        self.counters.packets_out += 1
        return True


class RtpLink:
    """A call's ExternalMedia RTP: its packets come from Asterisk's address for it (routed by the
    server), its frames go back there from the engine's one socket."""

    transport = "rtp"

    def __init__(self, server: RtpServer, remote: tuple[str, int]) -> None:
        self.server = server
        self.remote = remote
        self.where = f"{remote[0]}:{remote[1]}/udp"
        self._media: CallMedia | None = None

    def attach(self, media: CallMedia) -> None:
        self._media = media
        media.remote = media.session.rtp_remote = self.remote
        self.server.register(media)

    def send_frame(self, media: CallMedia, payload: bytes, marker: bool) -> bool:
        return self.server.send(media, payload, marker)

    def flush(self) -> None:
        pass  # Asterisk plays each packet as it comes: nothing held there

    def hangup(self) -> None:
        pass  # RTP has no session to end: the channel's deletion is all

    def close(self) -> None:
        # The route stays ENDED_GRACE_S after, so that packets still in flight are recognised.
        if self._media is not None:
            self.server.unregister(self._media)


def _size_receive_buffer(sock: socket.socket, wanted: int) -> int:
    if wanted:
        try:  # root may exceed net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    got: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice the payload room
    if wanted and got < wanted // 2:
        log.warning(
            "RTP receive buffer is %d KiB, %d KiB asked: raise net.core.rmem_max (sysctl) or run as root",
            got // 1024, wanted // 1024,
        )
    return got


class KernelDrops:
    """The socket's drop counter from /proc/net/udp (the kernel's count of datagrams it had no room
    for), read at most once a second: cheap enough for /health under load."""

    def __init__(self, clock: Clock, min_interval_s: float = 1.0) -> None:
        self._clock = clock
        self._inode: int | None = None
        self._min_interval_s = min_interval_s
        self._at = -min_interval_s
        self._value: int | None = None

    def watch(self, fd: int) -> None:
        self._inode = os.fstat(fd).st_ino

    def read(self) -> int | None:
        now = self._clock.now()
        if self._inode is None or now - self._at < self._min_interval_s:
            return self._value
        self._at = now
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        if len(fields) >= 13 and fields[9] == str(self._inode):
                            self._value = int(fields[12])
                            return self._value
            except (OSError, StopIteration, ValueError):
                continue
        return self._value
