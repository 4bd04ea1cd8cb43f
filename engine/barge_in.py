"""While the agent speaks: is the caller talking over it? A run of the caller's voiced frames long
enough (barge_in.min_ms) is a barge-in; a shorter one (pause_ms) holds the agent's audio first, so
the caller hears it stop within a frame, and lets it go on where it paused if the run ends short
(a cough, a click, line echo)."""

from __future__ import annotations

from collections import deque
from typing import Callable

from engine.config import BargeInConfig
from engine.status import ConversationCounters
from media.frames import FRAME_S, frames_in
from media.vad import VoiceActivity
from runtime.clock import Clock, Timer


class BargeInListener:
    def __init__(
        self,
        *,
        config: BargeInConfig,
        vad: VoiceActivity,
        counters: ConversationCounters,
        clock: Clock,
        pause_agent: Callable[[bool], bool],  # holds (True) or resumes (False) the agent's audio; False: nothing held
    ) -> None:
        self._enabled = config.enabled
        self._frames = frames_in(config.min_ms)
        self._level = config.min_level_dbfs
        self._pause_frames = frames_in(config.pause_ms) if config.pause_ms else 0
        self._vad = vad
        self._counters = counters
        self._clock = clock
        self._pause_agent = pause_agent
        self.run: deque[tuple[bytes, float]] = deque(maxlen=self._frames)  # (frame, level)
        self._pause_timer: Timer | None = None  # set while the agent's audio is held on a run of caller sound

    def hear(self, frame: bytes, level: float) -> tuple[bool, bool]:
        """One frame of the caller's while the agent speaks: (voiced, a barge-in now)."""
        voiced = level >= self._level and self._vad.is_voiced(frame, level)
        if voiced:
            self.run.append((frame, level))
            if self._enabled:
                if len(self.run) >= self._frames:
                    return True, True
                if self._pause_frames and len(self.run) >= self._pause_frames and self._pause_timer is None and self._pause_agent(True):
                    # The caller may be talking over the agent: its audio is held now and the run
                    # decides. A phone with DTX sends nothing once its user is quiet: no quiet
                    # frame would end the run, so a timer does.
                    self._counters.barge_in_pauses += 1
                    self._pause_timer = self._clock.call_later((self._frames + 3) * FRAME_S, self._pause_expired)
        else:
            if len(self.run) >= 3:  # 60 ms or more, but not enough to stop the agent
                self._counters.barge_in_attempts += 1
            self.run.clear()
            self._end_pause(resume=True)
        return voiced, False

    def take(self) -> list[tuple[bytes, float]]:
        """The barge-in: the run heard so far (the caller's first words); a pause ends with it,
        since the stop that follows drops what was held."""
        heard = list(self.run)
        self.run.clear()
        self._end_pause(resume=False)
        return heard

    def _end_pause(self, resume: bool) -> None:
        """Ends a pause, if there is one: ``resume`` when the run of caller sound ended short of a
        barge-in, so the agent goes on from where it paused."""
        timer, self._pause_timer = self._pause_timer, None
        if timer is None:
            return
        timer.cancel()
        if resume:
            self._counters.false_pauses += 1
            self._pause_agent(False)

    def _pause_expired(self) -> None:
        self.run.clear()
        self._end_pause(resume=True)

    def close(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
