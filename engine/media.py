"""Per-call media conversion: caller RTP payload to provider PCM, agent PCM to paced u-law frames."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from media.audio import ULAW_SILENCE, Resampler, pcm16_to_ulaw, ulaw_to_pcm16
from media.rtp import ULAW_FRAME_BYTES
from engine.sessions import CallSession

ASTERISK_RATE = 8000


class LatencyRing:
    """The last N samples of one timing, in seconds; cheap to append on the hot path."""

    __slots__ = ("_buf", "_i", "count")

    def __init__(self, size: int = 1 << 16) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._i = 0
        self.count = 0

    def add(self, seconds: float) -> None:
        self._buf[self._i] = seconds
        self._i = (self._i + 1) % len(self._buf)
        self.count += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self.count, len(self._buf))].copy()

    def percentile_ms(self, q: float) -> float:
        v = self.values()
        return float(np.percentile(v, q) * 1000.0) if len(v) else 0.0

    def clear(self) -> None:
        self._i = 0
        self.count = 0


@dataclass(slots=True)
class MediaTimings:
    """Where the engine spends time per packet, for metrics and bench/media.py."""

    inbound: LatencyRing = field(default_factory=LatencyRing)  # datagram in -> handed to provider
    outbound: LatencyRing = field(default_factory=LatencyRing)  # provider audio -> frames queued, per frame
    send: LatencyRing = field(default_factory=LatencyRing)  # frame packetized and sent
    pacing_error: LatencyRing = field(default_factory=LatencyRing)  # send time - 20 ms deadline

    def clear(self) -> None:
        for ring in (self.inbound, self.outbound, self.send, self.pacing_error):
            ring.clear()


class CallMedia:
    """The media state of one call: its Asterisk address, outbound resampler and RTP stream."""

    __slots__ = (
        "session",
        "remote",
        "sink",
        "on_stream_start",
        "on_drained",
        "on_send_failed",
        "send_failures",
        "_down",
        "_partial",
        "out_frames",
        "max_queue_frames",
        "ssrc",
        "seq",
        "ts",
        "last_tick",
        "dry_tick",
        "queued_at",
    )

    def __init__(self, session: CallSession, remote: tuple[str, int], sink: Callable[[bytes], None], max_queue_frames: int = 1500) -> None:
        self.session = session
        self.remote = remote
        self.sink = sink  # receives the caller's audio as 8 kHz PCM16 (the conversation)
        # Outbound stream hooks, set by the stream playback of the call.
        self.on_stream_start: Callable[[float], None] | None = None  # first frame after a pause
        self.on_drained: Callable[[], None] | None = None  # queue ran empty
        self.on_send_failed: Callable[[], None] | None = None  # sends keep failing
        self.send_failures = 0
        self._down: Resampler | None = None
        self._partial = b""
        self.out_frames: deque[bytes] = deque()
        self.max_queue_frames = max_queue_frames
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.last_tick: int | None = None  # pacer tick of the last frame sent
        self.dry_tick: int | None = None  # tick at which a playing stream found its queue empty
        self.queued_at = 0.0  # loop time when the queue last went from empty to non-empty
        session.outbound_ssrc = self.ssrc

    def caller_audio(self, ulaw: bytes) -> None:
        """One in-order caller packet, decoded, to the conversation."""
        self.sink(ulaw_to_pcm16(ulaw))

    def agent_audio(self, pcm16: bytes, sample_rate: int) -> int:
        """Queue agent speech as 20 ms u-law frames; returns how many frames were added."""
        if sample_rate != ASTERISK_RATE:
            if self._down is None or self._down.in_rate != sample_rate:
                self._down = Resampler(sample_rate, ASTERISK_RATE)
            pcm16 = self._down.process(pcm16)
        data = self._partial + pcm16_to_ulaw(pcm16)
        whole = len(data) - len(data) % ULAW_FRAME_BYTES
        frames = self.out_frames
        for i in range(0, whole, ULAW_FRAME_BYTES):
            frames.append(data[i : i + ULAW_FRAME_BYTES])
        self._partial = data[whole:]
        overflow = len(frames) - self.max_queue_frames
        if overflow > 0:
            for _ in range(overflow):
                frames.popleft()
            self.session.rtp_out.overruns += overflow
        return whole // ULAW_FRAME_BYTES

    def finish_agent_audio(self) -> None:
        """End of an agent utterance: pad the last partial frame with silence and queue it."""
        if self._partial:
            self.out_frames.append(self._partial + bytes([ULAW_SILENCE]) * (ULAW_FRAME_BYTES - len(self._partial)))
            self._partial = b""

    def flush_outbound(self) -> int:
        """Drop all queued agent audio (barge-in); returns the frames dropped."""
        n = len(self.out_frames)
        self.out_frames.clear()
        self._partial = b""
        return n
