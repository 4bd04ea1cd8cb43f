"""What the agent does besides talking: a call's actions (say the line, wait until it has played,
transfer or hang up), their counts, and the caller-silence watchdog. The transfer's outcome after
the caller left Stasis is call control's (engine/calls.py).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Protocol

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.conversation import ConversationCoordinator
from engine.sessions import ActionChanged, ActionRecord, CallSession, ConversationState, SessionStore
from providers.base import ActionRequest, ProviderCall
from providers.profile import AgentProfile
from runtime.clock import Clock, Timer

log = logging.getLogger(__name__)

TRANSFER_CHECK_S = 2.0  # a caller hung up this soon after leaving Stasis: the target did not exist
ACTION_LINE_TIMEOUT_S = 30.0  # an action's line that has not played out by then: act anyway
TRANSFER_FAILED_LINE = "Sorry, I could not put you through right now."


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


class ActionHost(Protocol):
    """What the actions need of their call: its conversation and provider as they are now (a
    fallback may have replaced the provider), whether it is ending, its tasks."""

    conversation: ConversationCoordinator | None
    provider_call: ProviderCall | None

    @property
    def ending(self) -> bool: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class CallActions:
    """One call's actions: a transfer or a hangup, asked for by the agent, the caller's keypad, the
    silence watchdog or the operator, one at a time: its line said and heard, then carried out."""

    def __init__(
        self,
        *,
        host: ActionHost,
        session: CallSession,
        profile: AgentProfile,
        store: SessionStore,
        counters: ActionCounters,
        ari: AriClient,
        app: str,  # the ARI application: a transfer subscribes it to the caller's channel
        clock: Clock,
        end: Callable[[str], None],  # call control ends the call (hangs the caller up)
    ) -> None:
        self._host = host
        self.session = session
        self.profile = profile
        self._store = store
        self._counters = counters
        self._ari = ari
        self._app = app
        self._clock = clock
        self._end = end
        self.action: ActionRecord | None = None  # the action under way (one at a time)
        self.watch_silence = False  # the provider listens in turns and can speak a line (set at setup)
        self.watchdog = SilenceWatchdog(clock, profile.silence_prompt_s, profile.silence_hangup_s, self._silence_prompt, self._silence_hangup)

    @property
    def call_id(self) -> str:
        return self.session.call_id

    def watch(self, enabled: bool) -> None:
        self.watch_silence = self.watchdog.enabled = enabled

    def request(self, req: ActionRequest, by: str) -> bool:
        """The guard: a transfer goes only to one of the profile's departments, whoever asks; one
        action at a time."""
        s = self.session
        if self._host.ending or self._host.conversation is None:
            return False
        if self.action is not None:
            self._store.log(s.call_id, logging.INFO, f"{req.kind} asked for by {by} while {self.action.kind} is under way: ignored")
            return False
        rec = ActionRecord(kind=req.kind, by=by, reason=req.reason, department=req.department)
        if req.kind == "transfer":
            dept = self.profile.departments.get(req.department)
            if dept is None:
                rec.state = "refused"
                known = ", ".join(self.profile.departments) or "none"
                rec.detail = f"{req.department!r} is not a department of profile {s.profile} (it has: {known})"
                self._record(rec, logging.WARNING)
                return False
            rec.target = dept.target
            line = self.profile.announcement(req.department)
        else:
            line = self.profile.closing
        self.action = rec
        self._record(rec, logging.INFO)
        self._host.spawn(self._carry_out(rec, line))
        return True

    def _record(self, rec: ActionRecord, level: int) -> None:
        s = self.session
        if rec not in s.actions:
            s.actions.append(rec)
        report_action(self._store, self._counters, s.call_id, rec, level)

    async def _carry_out(self, rec: ActionRecord, line: str) -> None:
        """Says the action's line, waits until the caller has heard it, then acts."""
        conv, pcall = self._host.conversation, self._host.provider_call
        assert conv is not None and pcall is not None
        self.watchdog.close()
        played = conv.hold()
        await pcall.cancel_response(played)
        await self._say_and_wait(line)
        if rec.kind == "hangup":
            rec.state = "done"
            self._record(rec, logging.INFO)
            self._end(f"agent hung up ({rec.reason or rec.by})")
        else:
            await self._transfer(rec)

    async def _say_and_wait(self, line: str) -> None:
        conv, pcall = self._host.conversation, self._host.provider_call
        assert conv is not None and pcall is not None
        if not line:
            return
        done = conv.voice.played_out()  # before the line: its audio may come at once, or much later
        timer = self._clock.call_later(ACTION_LINE_TIMEOUT_S, _settle, done)
        try:
            if await pcall.say(line):
                await done
        finally:
            timer.cancel()
            done.cancel()

    async def _transfer(self, rec: ActionRecord) -> None:
        s = self.session
        dept = self.profile.departments[rec.department]
        # Sent before the request: the caller's StasisEnd can arrive before its 204.
        rec.state = "sent"
        try:
            if dept.endpoint:
                await self._ari.redirect(s.caller_channel_id, dept.endpoint)
                # A driver that cannot transfer (Local channels) answers 204 and does nothing.
                self._clock.call_later(TRANSFER_CHECK_S, self._redirect_check, rec)
            else:
                # Asterisk answers 204 even for a target that does not exist and then drops the
                # caller; subscribed to its channel, call control still sees that hangup.
                try:
                    await self._ari.subscribe(self._app, f"channel:{s.caller_channel_id}")
                except (AriError, AriUnavailable) as e:
                    log.warning("[%s] transfer: no subscription to the caller (%s); a dropped transfer will not be seen", self.call_id, e)
                await self._ari.continue_in_dialplan(s.caller_channel_id, dept.context, dept.extension, dept.priority)
        except (AriError, AriUnavailable) as e:
            await self._transfer_failed(rec, str(e))
            return
        self._record(rec, logging.INFO)

    def _redirect_check(self, rec: ActionRecord) -> None:
        if not self._host.ending and rec.state == "sent":
            self._host.spawn(self._transfer_failed(rec, "the caller is still here: its channel driver did not transfer (Local channels cannot)"))

    async def _transfer_failed(self, rec: ActionRecord, why: str) -> None:
        """The caller is still with us: say so and go on with the conversation."""
        rec.state, rec.detail = "failed", why
        self._record(rec, logging.ERROR)
        self.action = None
        conv = self._host.conversation
        if conv is None or self._host.ending:
            return
        await self._say_and_wait(TRANSFER_FAILED_LINE)
        conv.held = False
        self.watchdog.enabled = self.watch_silence
        self.watchdog.state(self.session.conversation)

    def transfer_left(self) -> ActionRecord | None:
        """The caller left Stasis: the transfer under way, if that is why."""
        rec = self.action
        return rec if rec is not None and rec.kind == "transfer" and rec.state == "sent" else None

    def _silence_prompt(self) -> None:
        self._counters.count("still_there", "done")
        self._store.log(self.call_id, logging.INFO, f"caller silent for {self.profile.silence_prompt_s:g} s: asking whether they are still there")
        self._host.spawn(self._prompt_silent_caller())

    async def _prompt_silent_caller(self) -> None:
        pcall = self._host.provider_call
        if pcall is not None and not await pcall.say(self.profile.still_there):
            self.watchdog.state(ConversationState.LISTENING)  # nothing was said: count on to the hangup

    def _silence_hangup(self) -> None:
        self.request(ActionRequest("hangup", reason=f"caller silent after {self.profile.still_there!r}"), by="silence")


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
