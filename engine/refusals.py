"""Callers turned away (at ``max_calls``, at the models' capacity, while the engine shuts down):
each one kept in the call history (outcome ``refused``, with the reason), summed in the log at most
once per ``LOG_INTERVAL_S`` per reason, and a /health problem for ``RECENT_S`` after the last one.

A burst can turn away hundreds of callers a second: one log line each would bury everything else,
and none at all leaves "who was turned away at 09:00" unanswerable. The log says how many and
why; the history says who.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from typing import Callable

from engine.ari.models import Channel
from engine.capacity import LOG_INTERVAL_S, RECENT_S
from runtime.clock import Clock, Timer
from engine.sessions import CallSession, CallState, SessionStore

REFUSED = "refused: "  # how a refused caller's end reason begins (the history's outcome "refused")


class Reason(str, enum.Enum):
    MAX_CALLS = "over max_calls"
    MODELS = "models at capacity"
    SHUTDOWN = "shutting down"


class Refusals:
    def __init__(self, clock: Clock, store: SessionStore) -> None:
        self._clock = clock
        self._store = store
        # The call history's writer (HistoryRecorder.call_refused), when the history is on.
        self.record: Callable[[CallSession], None] | None = None
        self.counts = {r: 0 for r in Reason}
        self._recent: deque[tuple[float, Reason]] = deque(maxlen=100000)
        self._held: dict[Reason, tuple[int, str]] = {}  # turned away since the last line: how many, the last why
        self._timers: dict[Reason, Timer] = {}
        self._last_why: dict[Reason, str] = {}

    def refused(self, ch: Channel, stasis_args: list[str], profile: str, reason: Reason, why: str, then: str) -> None:
        """``why``: the reason in words (with the limit); ``then``: what the caller gets."""
        now = time.time()
        self.counts[reason] += 1
        self._recent.append((self._clock.now(), reason))
        self._last_why[reason] = why
        if self.record is not None:
            self.record(CallSession(
                call_id=ch.id, caller_channel_id=ch.id, caller_channel_name=ch.name, caller_number=ch.caller.number,
                caller_name=ch.caller.name, stasis_args=tuple(stasis_args), dialled=ch.dialplan.exten, profile=profile,
                state=CallState.ENDED, downstream_mode="", created_at=now, ended_at=now, end_reason=f"{REFUSED}{why}; {then}",
            ))
        if reason in self._timers:
            n, _ = self._held.get(reason, (0, why))
            self._held[reason] = (n + 1, f"{why}; {then}")
            return
        # The first of a run at once; the rest summed when the interval is over.
        self._store.log(ch.id, logging.WARNING, f"caller {ch.caller.number or 'unknown'} turned away: {why}; {then} "
                                                f"(more are summed every {LOG_INTERVAL_S:.0f} s; who: aiagent-tui calls list --outcome refused)")
        self._timers[reason] = self._clock.call_later(LOG_INTERVAL_S, self._sum_up, reason)

    def _sum_up(self, reason: Reason) -> None:
        self._timers.pop(reason, None)
        n, why = self._held.pop(reason, (0, ""))
        if n:
            self._store.log(None, logging.WARNING, f"{n} more caller(s) turned away in the last {LOG_INTERVAL_S:.0f} s: {why}")
            self._timers[reason] = self._clock.call_later(LOG_INTERVAL_S, self._sum_up, reason)

    def flush(self) -> None:
        """The engine stops: the counts held back are logged now."""
        for reason, timer in list(self._timers.items()):
            timer.cancel()
            self._timers.pop(reason)
            n, why = self._held.pop(reason, (0, ""))
            if n:
                self._store.log(None, logging.WARNING, f"{n} more caller(s) turned away: {why}")

    def problems(self) -> tuple[str, ...]:
        """/health's problems (the engine is degraded) while callers were turned away at max_calls
        in the last RECENT_S. Turned away at the models' capacity is capacity.Overload's problem,
        which says what the capacity is based on; while shutting down, the engine is going anyway."""
        since = self._clock.now() - RECENT_S
        while self._recent and self._recent[0][0] <= since:
            self._recent.popleft()
        n = sum(1 for _, r in self._recent if r is Reason.MAX_CALLS)
        if not n:
            return ()
        return (f"{n} caller(s) turned away in the last {RECENT_S:.0f} s: {self._last_why[Reason.MAX_CALLS]}; "
                "who: aiagent-tui calls list --outcome refused",)
