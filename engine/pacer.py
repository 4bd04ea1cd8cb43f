"""The agent's audio out to every call, on one 20 ms clock, whatever the call's transport.

``Outbound`` queues a call's agent audio as u-law frames on its ``CallMedia`` and the pacer hands
one frame per call per tick to the call's ``MediaLink`` (RTP, AudioSocket, WebSocket): the
prebuffer, the underrun accounting, barge-in's flush and the operator's jitter buffer work the
same on each.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from engine.media import CallMedia, MediaTimings
from media.pacing import FrameGrid, next_rtp_timestamp
from runtime.clock import Clock, Timer

log = logging.getLogger(__name__)

UNDERRUN_WINDOW_TICKS = 5
SEND_FAILURES_BEFORE_FALLBACK = 3

ErrorSink = Callable[[str, BaseException], None]


def _log_error(component: str, e: BaseException) -> None:
    log.error("%s: %s", component, e, exc_info=e)


@dataclass(slots=True, kw_only=True)
class OutboundCounters:
    frames_out: int = 0  # frames handed to a link and sent
    send_errors: int = 0  # frames a link could not send
    late_ticks: int = 0  # pacer ticks that ran more than one frame late
    internal_errors: int = 0  # ticks lost to a failure in the engine's own code


class Outbound:
    """Every call's agent audio: queued per call, paced out by one ``OutboundPacer``."""

    def __init__(self, clock: Clock, *, timings: MediaTimings | None = None, on_error: ErrorSink = _log_error) -> None:
        self.clock = clock
        self.timings = timings or MediaTimings()
        # A failure inside the pacer: the tick is lost, never the schedule; the owner (the
        # engine's supervisor) logs and shows it.
        self.on_error = on_error
        self.counters = OutboundCounters()
        self.pacer = OutboundPacer(self, clock)

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

    def wake(self, media: CallMedia) -> None:
        self.pacer.wake(media)

    def discard(self, media: CallMedia) -> None:
        self.pacer.discard(media)

    def stop(self) -> None:
        self.pacer.stop()

    def send_frame(self, media: CallMedia, payload: bytes, marker: bool) -> None:
        if not media.link.send_frame(media, payload, marker):
            self.counters.send_errors += 1
            media.send_failures += 1
            if media.send_failures >= SEND_FAILURES_BEFORE_FALLBACK and media.owner is not None:
                media.owner.stream_send_failed()
            return
        self.counters.frames_out += 1
        media.sent(len(payload))
        if media.recording is not None:
            media.recording.agent_ulaw(payload)


class OutboundPacer:
    """One 20 ms clock for every call's outbound audio, on the loop's monotonic time.

    Each tick sends at most one frame per call. A stream (re)starts only with its prebuffer
    queued (or once its first frame has waited that long), a jitter buffer between the provider's
    timing and the pacer's grid, so that a provider delivering in real time does not underrun on
    phase jitter; it grows by a frame after each underrun (an operator's voice has a rule of its
    own: ``CallMedia.ready``). A tick that runs late does not send a burst to
    catch up (Asterisk's softmix flushes on bursts); the schedule skips ahead instead and the RTP
    timestamp follows the wall clock, as Asterisk's own streams do.
    """

    def __init__(self, outbound: Outbound, clock: Clock) -> None:
        self._out = outbound
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
        out = self._out
        done: list[CallMedia] = []
        for media in self._active:
            try:
                if self._serve(media, tick, deadline):
                    done.append(media)
            except Exception as e:
                # Out of the schedule (its next audio wakes it again); the other calls go on.
                done.append(media)
                out.counters.internal_errors += 1
                out.on_error("pacer", e)
        for media in done:
            del self._active[media]
        if not self._active:
            self._handle = None
            grid.idle()
            return
        if grid.advance(self._clock.now()):
            out.counters.late_ticks += 1
        self._handle = self._clock.call_at(grid.due(grid.tick), self._run)

    def _serve(self, media: CallMedia, tick: int, deadline: float) -> bool:
        """Sends this tick's frame of one call; True when the call has nothing more queued."""
        out = self._out
        timings = out.timings
        frames = media.out_frames
        last = media.last_tick
        playing = last is not None and last == tick - 1
        if media.paused or not media.bridged:
            # Held while the caller may be talking over it, or until the media channel is in the
            # bridge (Asterisk drops what reaches it before): out of the schedule until then.
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
        out.send_frame(media, frames.popleft(), marker)
        now = self._clock.now()
        if not playing and media.owner is not None:
            media.owner.stream_started(now)
        err = now - deadline
        timings.send.add(time.perf_counter() - t1)
        timings.pacing_error.add(err)
        media.paced(err)
        return False
