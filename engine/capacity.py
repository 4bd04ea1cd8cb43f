"""How many calls the models on this machine serve at once, measured from their own work; and
what the engine does beyond that.

The local pipeline's models run in worker processes here (providers/local/workers.py), each one
job at a time. What a call costs them is measured, not guessed: per second of call (calls on
providers with a stage here), the seconds each model worked, over about the last
``WINDOW_CALL_S`` call-seconds (older ones weigh less and less; time without calls changes
nothing). Two limits follow from it:

- a model busy more than ``TARGET_BUSY`` of the time queues turns past the latency goals:
  calls <= TARGET_BUSY / (the busiest model's seconds per call-second);
- the models share the cores: calls <= TARGET_BUSY * cores / (their core-seconds per
  call-second: each model's seconds times its threads).

The capacity is the lower of the two, at least 1. Until ``MIN_CALL_S`` call-seconds have been
seen it is ``START_PER_CORE`` calls a core; ``providers.local.max_active_calls`` sets it instead.
With more calls up than the models serve, a model is busy all the time and a call's share looks
smaller than its need: the capacity then comes out at most TARGET_BUSY times the calls up, so it
comes down until the calls it admits fit.

A new call beyond the capacity takes the over-capacity path (``asterisk.over_capacity``: busy,
or back to the dialplan) at once. ``Overload`` counts those callers and the turns the models
refused anyway (the caller hears the apology), logs them at most once per ``LOG_INTERVAL_S``,
and makes them a problem in /health for ``RECENT_S`` after the last one.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

from runtime.clock import Clock, Timer
from runtime.ratelimit import Throttle
from engine.sessions import CallSession, SessionStore

TARGET_BUSY = 0.7  # of a model's time, and of the cores, at the capacity: the rest absorbs bursts
WINDOW_CALL_S = 600.0  # the measurement's memory, in call-seconds (10 calls for a minute)
MIN_CALL_S = 60.0  # measured from this much call time on; the start value before
START_PER_CORE = 4
SAMPLE_S = 1.0
RECENT_S = 60.0  # turned-away callers and refused turns are a /health problem this long
LOG_INTERVAL_S = 10.0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Capacity:
    calls: int | None  # at once; None: no limit (no model runs on this machine)
    basis: str  # how it was found, in words


class ModelCapacity:
    """The capacity of this machine's models, from ``busy()`` (each model's seconds of work so
    far, by kind: StagePool.model_busy_s) and ``calls()`` (the calls up on providers that use
    them), sampled every ``SAMPLE_S`` on ``clock``."""

    def __init__(
        self, clock: Clock, busy: Callable[[], Mapping[str, float]], calls: Callable[[], int],
        threads: Mapping[str, int], *, cores: int | None = None, override: int = 0,
    ) -> None:
        self._clock = clock
        self._busy = busy
        self._calls = calls
        self._threads = dict(threads)
        self.cores = cores or usable_cores()
        self.override = override
        self._call_s = 0.0  # call-seconds, the older weighing less
        self._model_s: dict[str, float] = {}  # each model's seconds of work over those, the same
        self.observed_call_s = 0.0  # all the call time seen
        self._last_at: float | None = None
        self._last_busy: dict[str, float] = {}
        self._last_calls = 0
        self._timer: Timer | None = None

    def start(self) -> None:
        self.sample()
        self._timer = self._clock.call_later(SAMPLE_S, self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self._clock.call_later(SAMPLE_S, self._tick)
        self.sample()

    def sample(self) -> None:
        """Takes in the time since the last sample: the calls up (the mean of its two ends) and
        what each model worked meanwhile."""
        now, busy, calls = self._clock.now(), dict(self._busy()), self._calls()
        last_at, last_busy, last_calls = self._last_at, self._last_busy, self._last_calls
        self._last_at, self._last_busy, self._last_calls = now, busy, calls
        if last_at is None:
            return
        call_s = (calls + last_calls) / 2 * (now - last_at)
        if call_s <= 0:
            return  # no call: nothing to learn (the models' own start-up work, an idle line)
        keep = math.exp(-call_s / WINDOW_CALL_S)
        self._call_s = self._call_s * keep + call_s
        for kind, seconds in busy.items():
            self._model_s[kind] = self._model_s.get(kind, 0.0) * keep + max(0.0, seconds - last_busy.get(kind, seconds))
        self.observed_call_s += call_s

    def per_call(self) -> dict[str, float]:
        """Each model's seconds of work per second of call, as measured so far."""
        if self._call_s <= 0:
            return {}
        return {kind: s / self._call_s for kind, s in sorted(self._model_s.items())}

    def estimate(self) -> Capacity:
        if not self._busy():
            return Capacity(None, "no model runs on this machine")
        if self.override:
            return Capacity(self.override, "set by providers.local.max_active_calls")
        load = self.per_call()
        cpu = sum(s * min(self._threads.get(kind, 1), self.cores) for kind, s in load.items())
        if self.observed_call_s < MIN_CALL_S or cpu <= 0:
            return Capacity(START_PER_CORE * self.cores, f"start value, {START_PER_CORE} a core, until {MIN_CALL_S:.0f} call-seconds are measured")
        by_model = TARGET_BUSY / max(load.values())
        by_cores = TARGET_BUSY * self.cores / cpu
        calls = max(1, math.floor(min(by_model, by_cores) + 1e-9))
        shares = ", ".join(f"{kind} {s:.3f}" for kind, s in load.items())
        return Capacity(calls, f"measured: a second of call takes {shares} s of model work; {self.cores} cores")

    @property
    def limit(self) -> int | None:
        return self.estimate().calls


class Overload:
    """Callers turned away because the models were at capacity, and turns the models could not
    serve (refused at once: their queue was full; or lost to a crash): counted in the store (the
    header, /health, /metrics, each call's history), logged at most once per ``LOG_INTERVAL_S``
    with a count of the rest, and, for those two kinds of overload, a /health problem for
    ``RECENT_S`` after the last."""

    def __init__(self, clock: Clock, store: SessionStore) -> None:
        self._clock = clock
        self._store = store
        self._throttle = Throttle(LOG_INTERVAL_S, clock.now)
        self._refused: deque[float] = deque(maxlen=100000)
        self._busy_turns: deque[float] = deque(maxlen=100000)
        self.last_busy = ""  # the last refused turn's reason

    def call_refused(self) -> None:
        self._store.calls_refused_model_capacity += 1
        self._refused.append(self._clock.now())

    def turn_failed(self, session: CallSession, reason: str, busy: bool) -> None:
        session.turns_failed += 1
        self._store.turns_failed += 1
        if not busy:
            return  # lost to a crash: the provider's error says so, and the worker's state in /health
        self._busy_turns.append(self._clock.now())
        self.last_busy = reason
        # Under overload this comes for many turns at once: one line per interval, counting the rest.
        suffix = self._throttle.admit("busy")
        if suffix is not None:
            self._store.log(session.call_id, logging.WARNING, f"turn not served, {reason}: the caller gets the apology{suffix}")

    def problems(self, capacity: Capacity) -> tuple[str, ...]:
        """What /health shows (status degraded) while callers are turned away or turns refused."""
        since = self._clock.now() - RECENT_S
        for q in (self._refused, self._busy_turns):
            while q and q[0] <= since:
                q.popleft()
        out = []
        if self._refused:
            out.append(f"models at capacity: {len(self._refused)} caller(s) turned away in the last {RECENT_S:.0f} s ({capacity.calls} calls at once, {capacity.basis})")
        if self._busy_turns:
            out.append(f"models busy: {len(self._busy_turns)} turn(s) refused in the last {RECENT_S:.0f} s, the callers got the apology (last: {self.last_busy})")
        return tuple(out)
