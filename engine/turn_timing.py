"""The timeline of one call's turns: opened when the caller's speech ends, the provider's stages
marked on it as they come (providers.base.TurnMark), closed when the answer's first audio reaches
the line: then counted, observed by the metrics and published."""

from __future__ import annotations

from typing import Callable

from engine.sessions import CallSession, SessionStore, TurnCompleted, TurnTimeline
from engine.status import ConversationCounters
from providers.base import ModelWork, TurnStage
from runtime.clock import Clock


class TurnTiming:
    def __init__(
        self,
        *,
        session: CallSession,
        store: SessionStore,
        counters: ConversationCounters,
        observe_turn: Callable[[TurnTimeline], None],
        clock: Clock,
    ) -> None:
        self._session = session
        self._store = store
        self._counters = counters
        self._observe_turn = observe_turn
        self._clock = clock
        self._turn: TurnTimeline | None = None

    def speech_ended(self, fallback: bool, last_voice_at: float | None) -> bool:
        """The caller's speech ended: a new turn, unless a fallback flush ends a turn that has not
        been answered yet (it keeps its own). True when a turn began."""
        t = self._turn
        if fallback and t is not None and t.first_audio_out is None:
            return False
        self._turn = TurnTimeline(speech_end=self._clock.now(), last_voice_in=last_voice_at)
        return True

    def forget(self) -> None:
        """The turn under way is not the agent's to answer (an operator had the call)."""
        self._turn = None

    def mark(self, stage: TurnStage, at: float) -> None:
        t = self._turn
        # After the first audio too: behind a hold line, the answer's own stages still count.
        if t is not None and getattr(t, stage) is None:
            setattr(t, stage, at)

    def first_audio_out(self, at: float, handed: float | None, work: ModelWork | None) -> None:
        """The answer's first audio is on the line; ``work``: the provider's model jobs, for the
        turn's time inside the models."""
        t = self._turn
        if t is None or t.first_audio_out is not None:
            return
        t.first_audio_out = at
        t.audio_handed = handed if handed is not None else at
        if work is not None and t.speech_end is not None:
            share = work.share(t.speech_end, t.audio_handed)
            t.in_models_s, t.queued_s = share.inside_s, share.queued_s
        self._session.turns.append(t)
        self._counters.turns += 1
        self._observe_turn(t)
        self._store.publish(TurnCompleted(self._session.call_id, t))
