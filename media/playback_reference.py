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
_N, _T, _Q, _H = 0, 1, 2, 3  # the tracker's states: on the lag, the step frame, the frame after it, held
_HOLD_COST = -0.1  # while held, a frame that either state explains as well is taken as held ...
_GRACE_COST = 1.0  # ... and after the resume as playing (a silent stretch of the file must not drift)
_HOLD_GRACE_FRAMES = 10  # the pause may still show this long after the resume went out
_HALF = FRAME_SAMPLES // 2
_SETTLE_FRAMES = 50  # a second of clear evidence decides between an 8 and a 16 kHz caller
_TAIL_FRAMES = 3  # frames matched after the last one's echo is due; misses that end a stopped run
# After a run ended its echo is matched for as long as it keeps coming: a busy loop can read
# PlaybackFinished (or stop a playback) seconds before the RTP that carries the echo; at most this long.
_MAX_TAIL_FRAMES = 1500


class _Tracker:
    """One hypothesis of what the bridge does to the reference (``shape``), its frames, and the
    lag tracker that follows the echo in them."""

    def __init__(self, shape: _Shape | None) -> None:
        self._shape = shape  # None: the echo is the reference itself (an 8 kHz caller)
        self._frames: deque[np.ndarray] = deque()
        self._base = 0  # run frame index of _frames[0]
        self._pending = np.zeros(0, dtype=np.int64)  # samples short of a whole frame
        self._lag = 0  # received frame n carries reference frame n - lag
        self._lo = -_BEHIND  # the lowest lag tracked
        self._cost = _initial_cost()  # path cost per lag, from self._lo
        self.steps = 0
        self._held: tuple[int, int] | None = None  # (received frame, lag) when the engine paused
        if shape is not None:
            shape.reset()

    def add(self, pcm: np.ndarray) -> None:
        if self._shape is not None:
            pcm = self._shape.process(pcm)
        pcm = np.concatenate([self._pending, pcm])
        whole = len(pcm) - len(pcm) % FRAME_SAMPLES
        self._frames.extend(pcm[:whole].reshape(-1, FRAME_SAMPLES))
        self._pending = pcm[whole:]

    def _ref(self, k: int) -> np.ndarray | None:
        i = k - self._base
        if 0 <= i < len(self._frames):
            return self._frames[i]
        return None

    def remaining(self, n: int) -> int:
        """Reference frames whose echo is still to come at received frame ``n`` (negative: frames
        since the last one's)."""
        return self._base + len(self._frames) - (n - self._lag)

    def held(self, n: int) -> None:
        if self._held is None:
            self._held = (n, self._lag)

    def resumed(self, n: int) -> None:
        """Frames with nothing of the file told the tracker little where the file itself was silent:
        the pause is taken as lasting from the hold to now, at most two frames shorter (the pause
        reached the bridge late), and the lags are tracked from there."""
        if self._held is None:
            return
        n0, lag0 = self._held
        self._held = None
        self._lag = lag0 + (n - n0)
        self._lo = self._lag - _BEHIND
        lags = self._lo + np.arange(_WINDOW)
        self._cost = np.full((4, _WINDOW), np.inf)
        near = (lags >= self._lag - 2) & (lags <= self._lag)
        self._cost[:, near] = 0.0

    def follow(self, x: np.ndarray, n: int, running: bool, hold_cost: float | None = None) -> np.ndarray | None:
        """What of the reference is in received frame ``n`` (None: nothing), moving the pointer.

        A small hidden-Markov tracker over the lags around the pointer. Each frame is the caller
        plus, at the pointer's lag, the reference frame (state N), or, where the mixer inserted a
        frame without playback, the step frame (T: the lag grows by one, at a fixed cost) and the
        frame after it (Q). For an 8 kHz caller the step frame is empty and the next one whole;
        for a 16 kHz caller, whose echo is half a frame late, the gap falls mid-frame: the step
        frame holds the first half of the old lag's frame and the next one the second half of
        the new lag's. Costs are in units of the frame's unexplained energy, so that a loud
        caller, who makes every lag look alike, cannot move the pointer on one frame's evidence,
        while a frame that only the new lag explains does at once.

        ``hold_cost``: the engine paused the playback (or just resumed it), so frames without
        playback may follow each other for as long as the pause (state H: nothing of the
        reference, the lag one more each frame), at this cost; None: H is ruled out."""
        end = self._base + len(self._frames)
        while running and n - (self._lo + _BEHIND) >= end:
            self._lo += 1  # all that was posted has played: the stream carries no playback now
            self._cost = np.concatenate([self._cost[:, 1:], self._cost[:, -1:]], axis=1)
        half = self._shape is not None
        zero = np.zeros(FRAME_SAMPLES, dtype=np.int64)
        est = np.empty((3, _WINDOW, FRAME_SAMPLES), dtype=np.int64)  # N, T, Q; H holds nothing of it
        for i in range(_WINDOW):
            lag = self._lo + i
            r = self._ref(n - lag)
            est[_N, i] = zero if r is None else r
            if half:
                before = self._ref(n - lag + 1)  # the old lag's frame, of which the first half plays
                est[_T, i] = zero if before is None else np.concatenate([before[:_HALF], zero[_HALF:]])
                est[_Q, i] = zero if r is None else np.concatenate([zero[:_HALF], r[_HALF:]])
            else:
                est[_T, i] = zero
                est[_Q, i] = est[_N, i]
        d = x[None, None, :] - est
        obs = np.einsum("kij,kij->ki", d, d).astype(np.float64)
        ex = float(np.dot(x, x))
        scale = max(_FLOOR, min(float(obs.min()), ex)) / _DOF
        obs /= scale
        c = self._cost
        settled = np.minimum(c[_N], c[_Q])
        new = np.empty_like(c)
        new[_N] = settled + obs[_N]
        new[_T, 0] = np.inf
        new[_T, 1:] = settled[:-1] + _STEP_COST + obs[_T, 1:]
        # A pause is entered like a step (the step frame then nothing: a 16 kHz caller's first
        # frame still has half a frame of the file) and left like one (the frame after it).
        new[_Q] = np.minimum(c[_T], c[_H]) + obs[_Q]
        new[_H, 0] = np.inf
        new[_H, 1:] = np.inf if hold_cost is None else c.min(axis=0)[:-1] + hold_cost + ex / scale  # nothing explained
        low = new.min()
        if not np.isfinite(low):
            # Every path ruled out (seen once, at 250 calls with most packets dropped by the kernel):
            # start over from the pointer rather than carry NaN costs for the rest of the call.
            new = _initial_cost()
            new[_N] = np.where(np.isfinite(new[_N]), 0.0, np.inf)
            low = 0.0
        new -= low
        kind, best = np.unravel_index(int(np.argmin(new)), new.shape)
        lag = self._lo + int(best)
        # The window follows the pointer forward only (the delay never shrinks): lags behind it stay
        # in reach until the pointer is _BEHIND ahead of them.
        shift = int(best) - _BEHIND
        if shift > 0:
            new = np.concatenate([new[:, shift:], np.full((4, shift), new.max() + _STEP_COST)], axis=1)
            self._lo += shift
        self._cost = new
        if lag != self._lag:
            self.steps += lag - self._lag
            self._lag = lag
        # Reference frames the pointer has passed are not needed again (the delay only grows; a
        # pause may yet put the pointer back to where it began).
        while self._held is None and self._frames and self._base < n - self._lag - _BEHIND:
            self._frames.popleft()
            self._base += 1
        if kind == _H:
            return None
        out = est[kind, best]
        return out if out.any() else None


class _Shape:
    """A 16 kHz caller's bridge (BEHAVIOUR.md): the echo comes 80 samples (10 ms) later and low-pass
    filtered by the 8 -> 16 -> 8 kHz translation. Modelled by a 3.5 kHz linear-phase low-pass, not
    Asterisk's own filter: about 40 dB on speech."""

    TAPS = 21
    DELAY = 80

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        c = 3500 / 8000
        h = 2 * c * np.sinc(2 * c * n) * np.hanning(self.TAPS)
        self._h = h / h.sum()
        self.reset()

    def reset(self) -> None:
        # The filter's own delay is half its length: the rest of the 80 samples is leading silence.
        self._history = np.zeros(self.TAPS - 1)
        self._lead = self.DELAY - (self.TAPS - 1) // 2

    def process(self, pcm: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm.astype(np.float64)])
        self._history = x[-(self.TAPS - 1):]
        y = np.rint(np.convolve(x, self._h, mode="valid")).astype(np.int64)
        if self._lead:
            y = np.concatenate([np.zeros(self._lead, dtype=np.int64), y])
            self._lead = 0
        return y


class PlaybackReference:
    def __init__(self) -> None:
        # Two hypotheses of the caller's bridge, each followed; the one that explains the
        # capture better lately is used.
        self._narrow = _Tracker(None)
        self._wide = _Tracker(_Shape())
        self._fit = np.zeros(2)  # recent unexplained energy per hypothesis
        self._n = 0  # run frame index of the next received frame
        self._running = False  # playbacks are queued or playing
        self._tail = 0  # frames left to match once the run ended
        self._until_echoed = False  # ... ended by playing to its end: matched until its echo is in
        self._misses = 0  # frames in a row, after the run, that its reference did not explain
        self._earlier_steps = 0
        self._evidence = 0  # frames on which one hypothesis clearly won
        self._settled = False
        self.wideband = False  # the caller's bridge looks like a 16 kHz one
        self._hold = 0  # frames for which the playback may be held (paused); -1: until resumed

    # ---- the run
    def posted(self, ulaw: bytes) -> None:
        """A playback's audio, at the moment its POST goes out: the first of a run anchors it."""
        if not self._running and self._tail == 0:
            self._reset()
        self._running = True
        pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype=np.int16).astype(np.int64)
        self._narrow.add(pcm)
        self._wide.add(pcm)

    def hold(self, on: bool) -> None:
        """The engine paused (True) or resumed (False) the playing file: the echo stops where the
        pause reaches the bridge and goes on from that point of the file after the resume."""
        for t in (self._narrow, self._wide):
            if on:
                t.held(self._n)
            else:
                t.resumed(self._n)
        self._hold = -1 if on else (_HOLD_GRACE_FRAMES if self._hold else 0)

    def run_ended(self, played: bool = False) -> None:
        """Every posted playback finished or was stopped: nothing more is coming back after the
        echo frames still on their way. ``played``: the run played to its end, so the echo of all
        of it is coming; else (stopped, failed) only a few frames more."""
        if self._running:
            self._running = False
            self._until_echoed = played
            self._tail = _MAX_TAIL_FRAMES
            self._misses = 0

    def _reset(self) -> None:
        # The bridge's kind carries over from run to run (it is the caller's); the lags do not.
        self._earlier_steps += self.steps
        self._narrow = _Tracker(None)
        self._wide = _Tracker(self._wide._shape)
        self._n = 0

    @property
    def active(self) -> bool:
        return self._running or self._tail > 0

    def _judge(self, x: np.ndarray, n: int, hold: float | None) -> np.ndarray | None:
        """Both hypotheses follow the echo until one has explained it clearly better for long
        enough; then only that one runs (the caller's codec does not change mid-call)."""
        outs = [self._narrow.follow(x, n, self._running, hold), self._wide.follow(x, n, self._running, hold)]
        misfit = np.array([float(np.dot(x - r, x - r)) if r is not None else float(np.dot(x, x)) for r in outs])
        self._fit = 0.9 * self._fit + 0.1 * misfit
        narrow, wide = float(self._fit[0]), float(self._fit[1])
        self.wideband = wide < 0.5 * narrow or (self.wideband and wide < 2 * narrow)
        if max(narrow, wide) > 16 * max(_FLOOR, min(narrow, wide)):
            self._evidence += 1  # one hypothesis explains 12 dB more than the other
            self._settled = self._evidence >= _SETTLE_FRAMES
        return outs[1] if self.wideband else outs[0]

    @property
    def steps(self) -> int:
        """Frames without playback found so far (the delay grew), over every run."""
        return self._earlier_steps + (self._wide.steps if self.wideband else self._narrow.steps)

    # ---- the capture stream
    def residual(self, frame: bytes, lost: int = 0) -> bytes:
        """``frame`` (8 kHz PCM16, 20 ms) with the agent's playback taken out."""
        if not self.active:
            return frame
        if not self._running:
            # After the run: matched while its echo keeps coming, until the echo of its last
            # frame is due (and a few frames more).
            self._tail -= 1
            tracker = self._wide if self.wideband else self._narrow
            if self._tail <= 0 or self._misses >= _TAIL_FRAMES or (self._until_echoed and tracker.remaining(self._n) <= -_TAIL_FRAMES):
                self._let_go()
                return frame
        self._n += lost
        n = self._n
        self._n += 1
        x = np.frombuffer(frame, dtype=np.int16).astype(np.int64)
        hold = _HOLD_COST if self._hold < 0 else _GRACE_COST if self._hold > 0 else None
        if self._hold > 0:
            self._hold -= 1
        if self._settled:
            out = (self._wide if self.wideband else self._narrow).follow(x, n, self._running, hold)
        else:
            out = self._judge(x, n, hold)
        if out is None:
            return frame
        y = x - out
        if not self._running and float(np.dot(out, out)) > _FLOOR:
            # The reference has sound here: if taking it out does not lower the frame, its echo
            # has stopped (a stopped playback), and what comes is the caller, to be left alone.
            if float(np.dot(y, y)) >= float(np.dot(x, x)):
                self._misses += 1
                if self._misses >= _TAIL_FRAMES:
                    self._let_go()
                    return frame
            else:
                self._misses = 0
        pcm: bytes = np.clip(y, -32768, 32767).astype(np.int16).tobytes()
        return pcm

    def _let_go(self) -> None:
        self._tail = 0
        self._misses = 0
        self._reset()


def _initial_cost() -> np.ndarray:
    """At a run's start the echo is at lag 0 or later (never before the POST), on the lag (N)."""
    lags = np.arange(-_BEHIND, _WINDOW - _BEHIND, dtype=np.float64)
    cost = np.full((4, _WINDOW), np.inf)
    cost[_N] = np.where(lags < 0, np.inf, lags * _STEP_COST)
    return cost
