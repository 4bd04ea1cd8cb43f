"""The engine's single UDP socket for ExternalMedia RTP: receive, route by source address, pace out.

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

from runtime.clock import Clock, LoopClock, Timer
from engine.media import CallMedia, MediaTimings
from runtime.ratelimit import RateLimitedLog
from media.pacing import FrameGrid, next_rtp_timestamp
from media.rtp import PT_ULAW, RtpPacket, RtpParseError, build_packet
from media.rtp_stats import DUPLICATE, LATE, PROBATION

log = logging.getLogger(__name__)

ENDED_GRACE_S = 2.0  # a call's address stays known this long after it ended (packets in flight)
UNDERRUN_WINDOW_TICKS = 5
SEND_FAILURES_BEFORE_FALLBACK = 3
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
    late_ticks: int = 0  # pacer ticks that ran more than one frame late
    internal_errors: int = 0  # packets or ticks lost to a failure in the engine's own code


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
        # A failure inside the receive path or the pacer: the packet or the tick is lost, never
        # the socket or the schedule; the owner (the engine's supervisor) logs and shows it.
        self.on_error = on_error
        self.timings = timings or MediaTimings()
        self.counters = RtpServerCounters()
        self.routes: dict[tuple[str, int], CallMedia] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.clock = clock or LoopClock()
        self._drops = KernelDrops(self.clock)
        self._ended: dict[tuple[str, int], float] = {}  # addresses of calls just ended -> until when
        self.pacer = OutboundPacer(self, self.clock)
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
        self.pacer.stop()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    @property
    def running(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    # -- routing
    def register(self, media: CallMedia) -> None:
        self._ended.pop(media.remote, None)
        other = self.routes.get(media.remote)
        if other is not None and other is not media:
            raise ValueError(f"RTP address {media.remote} already belongs to call {other.session.call_id}")
        self.routes[media.remote] = media

    def unregister(self, media: CallMedia) -> None:
        if self.routes.get(media.remote) is media:
            del self.routes[media.remote]
            now = self.clock.now()
            self._ended = {a: until for a, until in self._ended.items() if until > now}
            self._ended[media.remote] = now + ENDED_GRACE_S
        self.pacer.discard(media)

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
    def agent_audio(self, media: CallMedia, pcm16: bytes, sample_rate: int) -> None:
        t0 = time.perf_counter()
        was_empty = not media.out_frames
        n = media.agent_audio(pcm16, sample_rate)
        if n:
            self.timings.outbound.add((time.perf_counter() - t0) / n)
            if was_empty:
                media.queued_at = self.clock.now()
            self.pacer.wake(media)

    def finish_agent_audio(self, media: CallMedia) -> None:
        """End of an utterance: send the tail now rather than wait for the prebuffer."""
        media.finish_agent_audio()
        if media.out_frames:
            media.queued_at = 0.0
            self.pacer.wake(media)

    def send_frame(self, media: CallMedia, payload: bytes, marker: bool) -> None:
        if self.transport is None:
            return
        media.seq = (media.seq + 1) & 0xFFFF
        try:
            self.transport.sendto(build_packet(PT_ULAW, media.seq, media.ts, media.ssrc, payload, marker), media.remote)
        except OSError as e:
            self.counters.send_errors += 1
            media.send_failures += 1
            self._warn("send", f"[{media.session.call_id}] RTP send failed: {e}")
            if media.send_failures >= SEND_FAILURES_BEFORE_FALLBACK and media.owner is not None:
                media.owner.stream_send_failed()
            return
        self.counters.packets_out += 1
        media.sent(len(payload))
        if media.recording is not None:
            media.recording.agent_ulaw(payload)


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


class OutboundPacer:
    """One 20 ms clock for every call's outbound RTP, on the loop's monotonic time.

    Each tick sends at most one frame per call. A stream (re)starts only with its prebuffer
    queued (or once its first frame has waited that long), a jitter buffer between the provider's
    timing and the pacer's grid, so that a provider delivering in real time does not underrun on
    phase jitter; it grows by a frame after each underrun (an operator's voice has a rule of its
    own: ``CallMedia.ready``). A tick that runs late does not send a burst to
    catch up (Asterisk's softmix flushes on bursts); the schedule skips ahead instead and the RTP
    timestamp follows the wall clock, as Asterisk's own streams do.
    """

    def __init__(self, server: RtpServer, clock: Clock) -> None:
        self._server = server
        self._clock = clock
        self._active: dict[CallMedia, None] = {}  # ordered set of calls with frames queued
        self._handle: Timer | None = None
        self._grid = FrameGrid()

    def wake(self, media: CallMedia) -> None:
        if media.dry_tick is not None:
            if self._grid.tick - media.dry_tick <= UNDERRUN_WINDOW_TICKS:
                media.underrun()
            media.dry_tick = None
        self._active[media] = None
        if self._handle is None:
            self._handle = self._clock.call_at(self._grid.resume(self._clock.now()), self._run)

    def discard(self, media: CallMedia) -> None:
        self._active.pop(media, None)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._active.clear()

    def _run(self) -> None:
        grid = self._grid
        tick = grid.tick
        deadline = grid.due(tick)
        server = self._server
        done: list[CallMedia] = []
        for media in self._active:
            try:
                if self._serve(media, tick, deadline):
                    done.append(media)
            except Exception as e:
                # Out of the schedule (its next audio wakes it again); the other calls go on.
                done.append(media)
                server.counters.internal_errors += 1
                server.on_error("rtp-pacer", e)
        for media in done:
            del self._active[media]
        if not self._active:
            self._handle = None
            grid.idle()
            return
        if grid.advance(self._clock.now()):
            server.counters.late_ticks += 1
        self._handle = self._clock.call_at(grid.due(grid.tick), self._run)

    def _serve(self, media: CallMedia, tick: int, deadline: float) -> bool:
        """Sends this tick's frame of one call; True when the call has nothing more queued."""
        server = self._server
        timings = server.timings
        frames = media.out_frames
        last = media.last_tick
        playing = last is not None and last == tick - 1
        if media.paused or not media.bridged:
            # Held while the caller may be talking over it, or until the ExternalMedia channel is in
            # the bridge (Asterisk drops what reaches it before): out of the schedule until then.
            return True
        if not frames:
            if playing:
                media.dry_tick = tick
            if media.owner is not None:
                media.owner.stream_drained()
            return True
        if not playing and not media.ready(deadline):
            return False
        t1 = time.perf_counter()
        marker = last is not None and last != tick - 1
        if last is not None:
            media.ts = next_rtp_timestamp(media.ts, last, tick)
        media.last_tick = tick
        server.send_frame(media, frames.popleft(), marker)
        now = self._clock.now()
        if not playing and media.owner is not None:
            media.owner.stream_started(now)
        err = now - deadline
        timings.send.add(time.perf_counter() - t1)
        timings.pacing_error.add(err)
        media.paced(err)
        return False
