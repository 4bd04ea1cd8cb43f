"""The outbound pacer's arithmetic: one 20 ms grid for every call's frames, and the RTP timestamp
that follows it. No clock and no I/O here: the engine's pacer feeds in the time."""

from __future__ import annotations

from media.frames import FRAME_S, FRAME_SAMPLES


class FrameGrid:
    """Tick n is due at ``t0 + n * FRAME_S``. The numbering stays continuous across idle spells, so
    RTP timestamps derived from ticks stay on one clock; a tick that runs late is not caught up
    with a burst (Asterisk's softmix flushes on bursts): the grid skips ahead instead."""

    __slots__ = ("t0", "tick", "_started")

    def __init__(self) -> None:
        self.t0 = 0.0
        self.tick = 0  # the next tick to serve
        self._started = False

    def due(self, tick: int) -> float:
        return self.t0 + tick * FRAME_S

    def resume(self, now: float) -> float:
        """Work arrived while idle: the tick to serve next is the current one. Returns its due time."""
        if not self._started:
            self._started = True
            self.t0 = now
        else:
            self.tick = max(self.tick, int((now - self.t0) / FRAME_S))
        return self.due(self.tick)

    def advance(self, now: float) -> bool:
        """The current tick was served: move to the next one not yet past. True when ticks were
        skipped because this one ran late."""
        nxt = self.tick + 1
        behind = int((now - self.t0) / FRAME_S)
        self.tick = max(nxt, behind)
        return behind > nxt

    def idle(self) -> None:
        """The current tick was served and nothing is left to send."""
        self.tick += 1


def next_rtp_timestamp(ts: int, last_tick: int, tick: int) -> int:
    """The timestamp of a frame sent at ``tick`` when the stream's previous one went at ``last_tick``:
    it follows the wall clock across a pause, as Asterisk's own streams do."""
    return (ts + FRAME_SAMPLES * (tick - last_tick)) & 0xFFFFFFFF
