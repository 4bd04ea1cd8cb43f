"""Removes the agent's own bridge playback from the caller's capture stream (file mode).

Asterisk mixes a bridge playback into the ExternalMedia stream (BEHAVIOUR.md): what the engine
receives while the agent speaks is caller + agent, summed in signed linear by softmix and encoded
as u-law, one or two frames after the playback frame left the player. The engine wrote that
playback itself, so it knows the agent's part sample for sample: subtracting it leaves the caller
(plus u-law rounding, ~38 dB down), which is what barge-in detection needs to look at.

The delay is not known exactly (softmix re-times; the PlaybackStarted event and the first mixed
packet race each other), so each frame is compared against the reference at several lags, and the
lag whose residual has been smallest over the last frames is used. (Choosing per frame would now
and then pick a wrong lag that happens to cancel some of the caller too.)
"""

from __future__ import annotations

from collections import deque

import numpy as np

from media.audio import ulaw_to_pcm16
from media.frames import FRAME_SAMPLES

_SILENT = np.zeros(FRAME_SAMPLES, dtype=np.int64)


class PlaybackReference:
    def __init__(self, max_lag_frames: int = 5, lead_frames: int = 2) -> None:
        self._queue: deque[np.ndarray] = deque()  # reference frames not yet due
        self._history: deque[np.ndarray] = deque(maxlen=max_lag_frames + 1)  # due, newest last
        self._lead = lead_frames  # how far the reference may run behind the capture
        self._scores = np.zeros(max_lag_frames + 1 + lead_frames)  # smoothed residual energy per lag

    def add(self, ulaw: bytes) -> None:
        """The audio of a playback that just started (appended after any still running)."""
        pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype=np.int16).astype(np.int64)
        pad = (-len(pcm)) % FRAME_SAMPLES
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int64)])
        self._queue.extend(pcm.reshape(-1, FRAME_SAMPLES))

    def clear(self) -> None:
        self._queue.clear()
        self._history.clear()
        self._scores[:] = 0.0

    @property
    def active(self) -> bool:
        return bool(self._queue) or any(h is not _SILENT for h in self._history)

    def residual(self, frame: bytes) -> bytes:
        """``frame`` (8 kHz PCM16, 20 ms) with the agent's playback taken out."""
        x = np.frombuffer(frame, dtype=np.int16).astype(np.int64)
        self._history.append(self._queue.popleft() if self._queue else _SILENT)
        # One candidate per lag, in a fixed order: the frames already due (newest first), then a
        # few not yet due; a lag with nothing there is silence.
        hist, queue = self._history, self._queue
        candidates = [hist[-1 - k] if k < len(hist) else _SILENT for k in range(hist.maxlen or 0)]
        candidates += [queue[k] if k < len(queue) else _SILENT for k in range(self._lead)]
        if all(ref is _SILENT for ref in candidates):
            return frame
        residuals = [x - ref for ref in candidates]
        energies = np.array([float(np.dot(r, r)) for r in residuals])
        scores = self._scores
        scores *= 0.9  # about 200 ms of memory
        scores += 0.1 * energies
        best = residuals[int(np.argmin(scores))]
        return np.clip(best, -32768, 32767).astype(np.int16).tobytes()
