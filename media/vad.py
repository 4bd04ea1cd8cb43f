"""Voice activity on the caller's 20 ms frames: webrtcvad, a start run, a hangover, a level meter."""

from __future__ import annotations

import webrtcvad

from media.audio import rms_dbfs
from media.frames import RATE, frames_in

class VoiceActivity:
    """Speech/silence for one call, from 8 kHz PCM16 20 ms frames.

    ``update`` returns "start" when voiced frames have run for ``start_ms``, "end" when unvoiced
    frames have run for ``end_ms`` after speech, else None. A frame counts as voiced only if
    webrtcvad says so and it is louder than ``min_level_dbfs``.
    """

    __slots__ = ("_vad", "_start_frames", "_end_frames", "_min_level", "speaking", "_voiced_run", "_silent_run", "level_dbfs", "voiced")

    def __init__(self, aggressiveness: int, start_ms: int, end_ms: int, min_level_dbfs: float) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._start_frames = frames_in(start_ms)
        self._end_frames = frames_in(end_ms)
        self._min_level = min_level_dbfs
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self.level_dbfs = -96.0
        self.voiced = False

    def is_voiced(self, frame: bytes, level_dbfs: float) -> bool:
        return level_dbfs >= self._min_level and self._vad.is_speech(frame, RATE)

    def update(self, frame: bytes) -> str | None:
        self.level_dbfs = level = rms_dbfs(frame)
        self.voiced = voiced = self.is_voiced(frame, level)
        if voiced:
            self._voiced_run += 1
            self._silent_run = 0
        else:
            self._silent_run += 1
            self._voiced_run = 0
        if not self.speaking and self._voiced_run >= self._start_frames:
            self.speaking = True
            return "start"
        if self.speaking and self._silent_run >= self._end_frames:
            self.speaking = False
            return "end"
        return None

    def reset(self) -> None:
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
