"""What the agent does besides talking: the counts of its actions, and the caller-silence watchdog.

The actions themselves (say the line, wait until it has played, transfer or hang up) are the
Call's (engine/call.py); the transfer's outcome after the caller left Stasis is call control's.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from runtime.clock import Clock, Timer
from engine.sessions import ActionChanged, ActionRecord, ConversationState, SessionStore

TRANSFER_CHECK_S = 2.0  # a caller hung up this soon after leaving Stasis: the target did not exist


@dataclass(slots=True)
class ActionCounters:
    """Engine-wide, for /metrics: (kind, outcome) -> count. Kinds: transfer, hangup, still_there;
    outcomes: done, failed, refused."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, kind: str, outcome: str) -> None:
        self.counts[(kind, outcome)] += 1


FINAL_STATES = frozenset({"done", "failed", "refused"})


def report_action(store: SessionStore, counters: ActionCounters, call_id: str, rec: ActionRecord, level: int) -> None:
    """An action's news, once per change: to the session's subscribers, the call's log and, when it
    has come to an end, the counts."""
    store.publish(ActionChanged(call_id, copy.copy(rec)))
    store.log(call_id, level, rec.describe() + (f" ({rec.reason})" if rec.reason else ""))
    if rec.state in FINAL_STATES:
        counters.count(rec.kind, rec.state)


class SilenceWatchdog:
    """The caller says nothing while the agent listens: after ``prompt_s`` it asks whether they are
    still there (``on_prompt``); after ``hangup_s`` more of silence it ends the call
    (``on_hangup``). Anything the caller says starts the count again."""

    def __init__(self, clock: Clock, prompt_s: float, hangup_s: float, on_prompt: Callable[[], None], on_hangup: Callable[[], None]) -> None:
        self._clock = clock
        self._delays = (prompt_s, hangup_s)
        self._on_prompt = on_prompt
        self._on_hangup = on_hangup
        self._stage = 0  # 0: waiting to prompt; 1: prompted, waiting to hang up
        self._timer: Timer | None = None
        self.enabled = prompt_s > 0

    def state(self, state: ConversationState) -> None:
        """The conversation's state changed: the count runs only while the agent listens."""
        if state is ConversationState.USER_SPEAKING:
            self._stage = 0
        if state is ConversationState.LISTENING:
            self._arm()
        else:
            self._cancel()

    def _arm(self) -> None:
        self._cancel()
        if self.enabled:
            self._timer = self._clock.call_later(self._delays[self._stage], self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._stage == 0:
            self._stage = 1
            self._on_prompt()
        else:
            self.enabled = False
            self._on_hangup()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.enabled = False
        self._cancel()
