"""Removes the agent's own bridge playback from the caller's capture stream (file mode).

What a real bridge does with a playback, measured on Asterisk 22 (BEHAVIOUR.md, "The echo of
bridge playbacks"): the ExternalMedia stream carries the file's samples bit-exact, summed with the
caller's audio (saturating) and re-encoded to u-law; queued playbacks are played back to back,
sample-continuously whatever their lengths; the delay is a whole number of 20 ms frames and only
ever grows: now and then the mixer sends one frame without playback and the file goes on a frame
later. So the reference is one continuous sample stream per run of queued playbacks, anchored at
the first POST of the run (PlaybackStarted races the echo), and a whole-frame pointer follows the
echo: each received frame either carries the next reference frame (the pointer advances) or no
playback at all (the pointer holds: the delay grew by a frame). A small tracker weighs the two
over a few lags around the pointer (see ``_follow``): with a silent or noisy line the echo is
cancelled exactly (to the u-law re-quantisation of the sum), and a caller talking over the agent
cannot push the pointer off on one frame's evidence.

Packets lost on the way are skipped with ``lost`` so that frame counting stays on the sender's
grid.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from media.audio import ulaw_to_pcm16
from media.frames import FRAME_SAMPLES

_BEHIND = 3  # lags tracked behind the pointer: a path that ran ahead wrongly can fall back to them
_WINDOW = _BEHIND + 4  # ... and ahead of it
_STEP_COST = 8.0  # a frame without playback must be that much likelier than the pointer staying
_DOF = 8.0  # independent values in a 20 ms frame of speech, about (it is not white noise)
_FLOOR = float(160 * 50**2)  # the unexplained energy of a frame is taken as at least -56 dBFS
_TAIL_FRAMES = 3  # frames matched after the last playback finished (its PlaybackFinished races the RTP)


class PlaybackReference:
    def __init__(self) -> None:
        self._frames: deque[np.ndarray] = deque()  # reference frames of the run not yet passed
        self._base = 0  # run frame index of _frames[0]
        self._pending = np.zeros(0, dtype=np.int64)  # samples short of a whole frame
        self._n = 0  # run frame index of the next received frame
        self._lag = 0  # received frame n carries reference frame n - lag
        self._lo = -_BEHIND  # the lowest lag tracked
        self._cost = _initial_cost()  # path cost per lag, from self._lo
        self._running = False  # playbacks are queued or playing
        self._tail = 0  # frames left to match once the run ended
        self.steps = 0  # frames without playback found (the delay grew)
        self.frames_cancelled = 0

    # ---- the run
    def posted(self, ulaw: bytes) -> None:
        """A playback's audio, at the moment its POST goes out: the first of a run anchors it."""
        if not self._running and self._tail == 0:
            self._reset()
        self._running = True
        pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype=np.int16).astype(np.int64)
        pcm = np.concatenate([self._pending, pcm])
        whole = len(pcm) - len(pcm) % FRAME_SAMPLES
        self._frames.extend(pcm[:whole].reshape(-1, FRAME_SAMPLES))
        self._pending = pcm[whole:]

    def run_ended(self) -> None:
        """Every posted playback finished or was stopped: nothing more is coming back after the
        echo frames still on their way."""
        if self._running:
            self._running = False
            self._tail = _TAIL_FRAMES

    def clear(self) -> None:
        self._running = False
        self._tail = 0
        self._reset()

    def _reset(self) -> None:
        self._frames.clear()
        self._base = 0
        self._pending = np.zeros(0, dtype=np.int64)
        self._n = 0
        self._lag = 0
        self._lo = -_BEHIND
        self._cost = _initial_cost()

    @property
    def active(self) -> bool:
        return self._running or self._tail > 0

    @property
    def lag_frames(self) -> int:
        return self._lag

    # ---- the capture stream
    def _ref(self, k: int) -> np.ndarray | None:
        i = k - self._base
        if 0 <= i < len(self._frames):
            return self._frames[i]
        return None

    def residual(self, frame: bytes, lost: int = 0) -> bytes:
        """``frame`` (8 kHz PCM16, 20 ms) with the agent's playback taken out."""
        if not self.active:
            return frame
        if not self._running:
            self._tail -= 1
            if self._tail == 0:
                self._reset()
        self._n += lost
        n = self._n
        self._n += 1
        x = np.frombuffer(frame, dtype=np.int16).astype(np.int64)
        out = self._follow(x, n)
        # Reference frames the pointer has passed are not needed again (the delay only grows).
        while self._frames and self._base < n - self._lag - 2:
            self._frames.popleft()
            self._base += 1
        if out is None:
            return frame
        self.frames_cancelled += 1
        pcm: bytes = np.clip(x - out, -32768, 32767).astype(np.int16).tobytes()
        return pcm

    def _follow(self, x: np.ndarray, n: int) -> np.ndarray | None:
        """The reference frame in received frame ``n``, moving the pointer; None: it carries no
        playback.

        A small hidden-Markov tracker over the lags around the pointer: each frame either
        continues at the same lag (the frame should be the caller plus that lag's reference
        frame) or the mixer inserted a frame without playback (the frame is the caller alone,
        the lag grows by one, at a fixed cost). The cheapest path wins; one loud caller frame
        cannot move the pointer, a frame that only the new lag explains does at once."""
        end = self._base + len(self._frames)
        while self._running and n - (self._lo + _BEHIND) >= end:
            self._lo += 1  # all that was posted has played: the stream carries no playback now
        ex = float(np.dot(x, x))
        obs = np.empty(_WINDOW)
        for i in range(_WINDOW):
            r = self._ref(n - (self._lo + i))
            if r is None:
                obs[i] = ex
            else:
                d = x - r
                obs[i] = float(np.dot(d, d))
        # In units of this frame's unexplained energy (the caller, mostly): a loud caller makes every
        # lag look alike, and then only a run of frames may move the pointer.
        scale = max(_FLOOR, min(float(obs.min()), ex)) / _DOF
        stay = self._cost + obs / scale
        step = np.full(_WINDOW, np.inf)
        step[1:] = self._cost[:-1] + _STEP_COST + ex / scale
        cost = np.minimum(stay, step)
        cost -= cost.min()
        best = int(np.argmin(cost))
        by_step = bool(step[best] < stay[best])
        lag = self._lo + best
        # The window follows the pointer forward only (the delay never shrinks): lags behind it stay
        # in reach until the pointer is _BEHIND ahead of them.
        shift = best - _BEHIND
        if shift > 0:
            cost = np.concatenate([cost[shift:], np.full(shift, cost.max() + _STEP_COST)])
            self._lo += shift
        self._cost = cost
        if lag != self._lag:
            self.steps += lag - self._lag
            self._lag = lag
        if by_step:
            return None  # the frame the mixer sent without playback
        return self._ref(n - lag)


def _initial_cost() -> np.ndarray:
    """At a run's start the echo is at lag 0 or later (never before the POST)."""
    lags = np.arange(-_BEHIND, _WINDOW - _BEHIND, dtype=np.float64)
    return np.where(lags < 0, np.inf, lags * _STEP_COST)
