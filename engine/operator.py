"""The operator in the loop on one call (engine.api.EngineView says what each does): a line for
the agent, an instruction for the rest of the call, a take-over (the agent silent, the operator's
voice to the caller) and its hand-back. Each is one of the call's actions in its history, or
refused with a line in the call's log saying why. The call owns one ``OperatorSeat``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Coroutine, Protocol

from engine.actions import ActionCounters, CallActions, report_action
from engine.conversation import ConversationCoordinator
from engine.media import CallMedia
from engine.pacer import Outbound
from engine.sessions import ActionRecord, CallSession, SessionStore
from providers.base import Provider, ProviderCall
from runtime.clock import Clock


@dataclass(frozen=True, slots=True)
class TakeOver:
    """An operator has the call: who, since when (the call's clock), and where the transcript stood."""

    by: str
    since: float
    transcript_at: int


def operator_note(seconds: float, words: list[str]) -> str:
    """What the agent's history gets at the hand-back: the operator's part, in the caller's words."""
    said = " ".join(f'"{w}"' for w in words)
    heard = f"Meanwhile the caller said: {said}." if words else "The caller said nothing the agent heard."
    return (f"[Note: a human operator took this call over for {seconds:.0f} seconds and spoke with the caller; "
            f"you were not on the line. {heard} The call is yours again: carry on from there.]")


class OperatorHost(Protocol):
    """What the operator's actions need of their call, as it is now (a fallback may have replaced
    its provider)."""

    conversation: ConversationCoordinator | None
    provider: Provider | None
    provider_call: ProviderCall | None
    media: CallMedia | None
    actions: CallActions

    @property
    def call_id(self) -> str: ...
    @property
    def ending(self) -> bool: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class OperatorSeat:
    def __init__(self, *, host: OperatorHost, session: CallSession, store: SessionStore, counters: ActionCounters, clock: Clock, outbound: Outbound) -> None:
        self._host = host
        self._session = session
        self._store = store
        self._counters = counters
        self._clock = clock
        self._outbound = outbound
        self.instructions: list[str] = []  # an operator's for this call: a provider that takes the call over gets them too
        self._taken_over: TakeOver | None = None

    def _refuse(self, what: str, by: str, why: str) -> bool:
        self._store.log(self._host.call_id, logging.WARNING, f"{what} by {by} refused: {why}")
        return False

    def _cannot(self) -> str | None:
        """Why no operator action can be taken on the call now, if so."""
        if self._host.ending:
            return "the call is ending"
        if self._host.conversation is None or self._host.provider_call is None or self._host.provider is None:
            return "the call is not connected yet"
        if self._host.actions.action is not None:
            return f"a {self._host.actions.action.kind} is under way"
        return None

    def _record(self, kind: str, by: str, text: str = "", state: str = "done", detail: str = "") -> ActionRecord:
        rec = ActionRecord(kind=kind, by=by, reason="", text=text, state=state, detail=detail, at=self._clock.wall().timestamp())
        self._session.actions.append(rec)
        report_action(self._store, self._counters, self._host.call_id, rec, logging.INFO)
        return rec

    def say(self, text: str, by: str) -> bool:
        text = " ".join(text.split())
        if why := self._cannot() or ("no line given" if not text else None):
            return self._refuse("a line for the agent", by, why)
        assert self._host.provider is not None and self._host.provider_call is not None and self._host.conversation is not None
        if self._taken_over is not None:
            return self._refuse("a line for the agent", by, f"the call is taken over by {self._session.operator}: speak to the caller, or hand it back first")
        if not self._host.provider.speaks_text:
            return self._refuse("a line for the agent", by, f"provider {self._host.provider.name} cannot speak a given line")
        self._host.conversation.operator_lines[text] = by
        rec = self._record("say", by, text, state="sent")
        self._host.spawn(self._say_next(rec, self._host.provider_call))
        return True

    async def _say_next(self, rec: ActionRecord, pcall: ProviderCall) -> None:
        said = await pcall.say_next(rec.text)
        if said:
            rec.state = "done"
        else:
            rec.state, rec.detail = "failed", "the call was taken over first" if self._taken_over is not None else "the provider could not say it"
            if self._host.conversation is not None:
                self._host.conversation.operator_lines.pop(rec.text, None)
        report_action(self._store, self._counters, self._host.call_id, rec, logging.INFO if said else logging.WARNING)

    def instruct(self, text: str, by: str) -> bool:
        text = " ".join(text.split())
        if why := self._cannot() or ("no instruction given" if not text else None):
            return self._refuse("an instruction", by, why)
        assert self._host.provider_call is not None and self._host.provider is not None and self._host.conversation is not None
        if not self._host.provider_call.instruct(text):
            return self._refuse("an instruction", by, f"provider {self._host.provider.name} takes no instructions")
        self.instructions.append(text)
        self._host.conversation.note(f"instruction: {text}", by)
        self._record("instruct", by, text)
        return True

    def take_over(self, by: str) -> bool:
        if why := self._cannot():
            return self._refuse("take over", by, why)
        assert self._host.provider_call is not None and self._host.provider is not None and self._host.conversation is not None
        if self._taken_over is not None:
            return self._refuse("take over", by, f"already taken over by {self._session.operator}")
        if not self._host.provider_call.hold_answers(True):
            return self._refuse(
                "take over", by, f"provider {self._host.provider.name} cannot hold its answers while the caller speaks; move the call to a pipeline provider first",
            )
        s = self._session
        self._taken_over = TakeOver(by, self._clock.now(), len(s.transcript))
        s.operator, s.operator_since = by, self._clock.wall().timestamp()  # set before the state's event goes out
        played = self._host.conversation.take_over()
        self._host.spawn(self._host.provider_call.cancel_response(played))
        if self._host.media is not None:
            self._host.media.operator_speaks(True)  # the agent's audio in stream mode is gone; the operator's starts clean, jitter-buffered
        self._host.conversation.note("an operator took the call over", by)
        self._record("take_over", by)
        return True

    def hand_back(self, by: str) -> bool:
        if self._host.ending:
            return self._refuse("hand back", by, "the call is ending")
        if self._taken_over is None:
            return self._refuse("hand back", by, "the call is not taken over")
        self._end_take_over(by, "")
        return True

    def _end_take_over(self, by: str, why: str) -> None:
        """The agent has the call again, with a note of what the caller said meanwhile."""
        t, conv, pcall = self._taken_over, self._host.conversation, self._host.provider_call
        assert t is not None and conv is not None and pcall is not None
        self._taken_over = None
        s = self._session
        seconds = self._clock.now() - t.since
        words = [turn.text for turn in s.transcript[t.transcript_at :] if turn.role == "caller"]
        if self._host.media is not None:
            self._host.media.operator_speaks(False)  # the operator's last words still queued are not the agent's
        pcall.hold_answers(False, operator_note(seconds, words))
        s.operator, s.operator_since = "", None
        conv.hand_back()
        conv.note("the operator handed the call back to the agent" + (f" ({why})" if why else ""), by)
        self._record("hand_back", by, detail=f"after {seconds:.0f} s" + (f"; {why}" if why else ""))

    def action_begins(self) -> None:
        """A transfer or hangup begins (the agent's line comes next): a take-over ends with it."""
        if self._taken_over is not None:
            self._end_take_over(self._taken_over.by, "an action on the call")

    def carry_over(self, pcall: ProviderCall, name: str) -> None:
        """A provider that takes the call over mid-call gets the operator's instructions, and holds
        its answers if the call is taken over (one that cannot ends the take-over)."""
        for text in self.instructions:
            pcall.instruct(text)
        if self._taken_over is not None and not pcall.hold_answers(True):
            self._end_take_over(self._taken_over.by, f"provider {name} cannot hold its answers")

    def audio(self, pcm16: bytes, rate: int) -> None:
        """The operator's voice to the caller, as paced frames on the media channel (in both
        playback modes); dropped unless the call is taken over."""
        if self._taken_over is None or self._host.ending or self._host.media is None or self._host.conversation is None:
            return
        if self._host.conversation.taps:
            self._host.conversation.taps("operator", pcm16, rate)
        self._outbound.agent_audio(self._host.media, pcm16, rate)

    @property
    def taken_over(self) -> bool:
        return self._taken_over is not None
