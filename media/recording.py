"""A call's two sides as one stereo stream: left the caller, right the agent, 16-bit 8 kHz.

Audio is placed by when it passed (seconds on the call's clock): each side is continuous while it
flows, and a pause longer than ``RESYNC_S`` is filled with silence so that both sides stay in step
to within that. ``take`` hands out the interleaved samples both sides have reached (the quieter
side is padded up to ``upto``), for a writer to append to the file.
"""

from __future__ import annotations

import numpy as np

from media.audio import ulaw_to_pcm16

RATE = 8000
RESYNC_S = 0.06  # a side this far behind its time is padded with silence; less is network jitter
CALLER, AGENT = 0, 1


class StereoTimeline:
    def __init__(self) -> None:
        self._pending: tuple[bytearray, bytearray] = (bytearray(), bytearray())  # pcm16 after `taken`
        self._placed = [0, 0]  # samples placed per side, from the start
        self.taken = 0  # samples handed out (per side), from the start

    def add(self, side: int, pcm16: bytes, at_s: float) -> None:
        target = int(at_s * RATE)
        gap = target - self._placed[side]
        if gap > RESYNC_S * RATE:
            self._put(side, bytes(2 * gap))
        self._put(side, pcm16)

    def add_ulaw(self, side: int, ulaw: bytes, at_s: float) -> None:
        self.add(side, ulaw_to_pcm16(ulaw), at_s)

    def cut(self, side: int, at_s: float) -> None:
        """Forgets what was placed on ``side`` after ``at_s`` and not yet taken: audio placed ahead
        of its time (a file the bridge plays) that was stopped or paused."""
        excess = self._placed[side] - max(int(at_s * RATE), self.taken)
        if excess > 0:
            del self._pending[side][len(self._pending[side]) - 2 * excess :]
            self._placed[side] -= excess

    def _put(self, side: int, pcm16: bytes) -> None:
        self._pending[side].extend(pcm16)
        self._placed[side] += len(pcm16) // 2

    def take(self, upto_s: float | None = None) -> bytes:
        """Interleaved stereo up to ``upto_s`` (None: all that was placed), silence where a side had
        nothing; what is taken is forgotten."""
        end = max(self._placed) if upto_s is None else int(upto_s * RATE)
        n = end - self.taken
        if n <= 0:
            return b""
        out = np.zeros((n, 2), dtype=np.int16)
        for side in (CALLER, AGENT):
            buf = self._pending[side]
            k = min(n, len(buf) // 2)
            if k:
                out[:k, side] = np.frombuffer(bytes(buf[: 2 * k]), dtype=np.int16)
                del buf[: 2 * k]
            if self._placed[side] < end:
                self._placed[side] = end
        self.taken = end
        return out.tobytes()
