"""Voice activity on the caller's 20 ms frames: webrtcvad, a start run, a hangover, a level meter."""

from __future__ import annotations

import webrtcvad

from media.audio import rms_dbfs

FRAME_MS = 20
FRAME_BYTES_8K = 320  # 160 samples of PCM16 at 8 kHz


def packet_frames(pcm: bytes, size: int = FRAME_BYTES_8K) -> list[bytes]:
    """One packet's audio as whole 20 ms frames. A short packet (Asterisk can end a prompt with a
    12-byte one) is padded with silence rather than carried into the next packet, so that frame
    boundaries stay on packet boundaries, where the agent's own playback lines up with them."""
    if len(pcm) == size:
        return [pcm]
    rem = len(pcm) % size
    if rem:
        pcm = pcm + bytes(size - rem)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


class VoiceActivity:
    """Speech/silence for one call, from 8 kHz PCM16 20 ms frames.

    ``update`` returns "start" when voiced frames have run for ``start_ms``, "end" when unvoiced
    frames have run for ``end_ms`` after speech, else None. A frame counts as voiced only if
    webrtcvad says so and it is louder than ``min_level_dbfs``.
    """

    __slots__ = ("_vad", "_start_frames", "_end_frames", "_min_level", "speaking", "_voiced_run", "_silent_run", "level_dbfs", "voiced")

    def __init__(self, aggressiveness: int, start_ms: int, end_ms: int, min_level_dbfs: float) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._start_frames = max(1, start_ms // FRAME_MS)
        self._end_frames = max(1, end_ms // FRAME_MS)
        self._min_level = min_level_dbfs
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self.level_dbfs = -96.0
        self.voiced = False

    def is_voiced(self, frame: bytes, level_dbfs: float) -> bool:
        return level_dbfs >= self._min_level and self._vad.is_speech(frame, 8000)

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
