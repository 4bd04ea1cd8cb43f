"""Receive statistics of a stream transport (AudioSocket over TCP, media over a WebSocket).

A byte stream has no sequence numbers and loses nothing: what a caller can notice go wrong is
audio arriving late (a stall: the connection or the PBX held it), in bursts (jitter), or not in
whole frames. These counters say that in the terms of the stream, beside RTP's loss and jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

GAP_S = 0.1  # an arrival this long after the previous one (5 frames) is a gap the caller's audio had


@dataclass(slots=True, kw_only=True)
class StreamStats:
    clock_rate: int = 8000
    messages: int = 0  # transport messages with audio
    frames: int = 0  # 20 ms frames passed on
    bytes: int = 0  # audio bytes
    gaps: int = 0  # arrivals more than GAP_S after the previous one, while audio flowed
    max_gap_ms: float = 0.0
    jitter: float = 0.0  # RFC 3550's interarrival jitter on the audio's own clock, in seconds
    malformed: int = 0  # messages the transport could not read (kind, length, framing)
    partial: int = 0  # audio messages not a whole number of samples
    first_arrival: float | None = None
    last_arrival: float | None = None
    _last_media_s: float = 0.0  # seconds of audio the previous message carried

    def update(self, samples: int, nbytes: int, arrival: float) -> None:
        """Account one audio message of ``samples`` samples that arrived at ``arrival`` (monotonic s)."""
        self.messages += 1
        self.bytes += nbytes
        last = self.last_arrival
        if last is None:
            self.first_arrival = arrival
        else:
            gap = arrival - last
            if gap > GAP_S:
                self.gaps += 1
            self.max_gap_ms = max(self.max_gap_ms, gap * 1000.0)
            d = gap - self._last_media_s
            self.jitter += (abs(d) - self.jitter) / 16.0
        self.last_arrival = arrival
        self._last_media_s = samples / self.clock_rate

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0
