"""A provider that finds turns itself in a continuous stream (Deepgram) needs to hear the caller's
silence too; a two-party bridge sends nothing while the caller is quiet. While no RTP comes, it
is given the silence it did not get."""

from __future__ import annotations

from typing import Callable

from media.frames import FRAME_S
from runtime.clock import Clock, Timer

FILL_CHECK_S = 0.1


class SilenceFill:
    def __init__(self, *, clock: Clock, silent_frame: Callable[[], None], last_frame_at: Callable[[], float]) -> None:
        self._clock = clock
        self._silent_frame = silent_frame  # hands the provider one frame of silence
        self._last_frame_at = last_frame_at  # when the last caller frame came
        self._timer: Timer | None = None
        self._filled_until = 0.0

    def enable(self, on: bool) -> None:
        if on and self._timer is None:
            self._timer = self._clock.call_later(FILL_CHECK_S, self._fill)
        elif not on:
            self.close()

    def _fill(self) -> None:
        now = self._clock.now()
        missing = int((now - max(self._last_frame_at(), self._filled_until)) / FRAME_S)
        if missing >= 3:
            for _ in range(missing):
                self._silent_frame()
            self._filled_until = now
        self._timer = self._clock.call_later(FILL_CHECK_S, self._fill)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
