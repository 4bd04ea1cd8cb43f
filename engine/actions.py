"""What the agent does besides talking: a call's actions (say the line, wait until it has played,
transfer, hang up or bring a person in), their counts, and the caller-silence watchdog. The
transfer's outcome after the caller left Stasis is call control's (engine/calls.py); calling the
person and what is left once the agent has gone are engine/handoff.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Protocol

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.config import AppConfig
from engine.conversation import ConversationCoordinator
from engine.handoff import Answered, Connection, PeopleDesk
from engine.sessions import ActionChanged, ActionRecord, CallSession, ConversationState, SessionStore
from providers.base import ActionRequest, ProviderCall
from providers.profile import AgentProfile
from runtime.clock import Clock, Timer

log = logging.getLogger(__name__)

TRANSFER_CHECK_S = 2.0  # a caller hung up this soon after leaving Stasis: the target did not exist
ACTION_LINE_TIMEOUT_S = 30.0  # an action's line that has not played out by then: act anyway
TRANSFER_FAILED_LINE = "Sorry, I could not put you through right now."
BRING_IN_WAYS = ("introduce", "bridge", "snoop")
INTRO_WORDS_MAX = 30  # of what the caller said, in the introduction


class PersonLeft(Exception):
    """The person brought in hung up before they were connected."""


def bring_in_line(department: str) -> str:
    """What the caller hears before a person is called in (introduce, bridge)."""
    return f"Please hold on a moment: I am bringing in someone from {department}."


# What the caller hears while a person's phone rings and while the person is told who is calling:
# the ring cadence of Asterisk's tone zone (indications.conf), played on the caller's channel until
# stopped. Without it a caller in silence hangs up.
RINGBACK = "tone:ring"


def not_reached_line(department: str) -> str:
    return f"Sorry, nobody from {department} can take the call right now. I'm still here to help."


def introduction(session: CallSession, department: str) -> str:
    """What the person hears before they are connected: who is calling, and what about (the
    caller's last words)."""
    who = session.caller_name or "a caller"
    digits = "".join(c for c in session.caller_number if c.isdigit())
    number = f", calling from {' '.join(digits)}," if digits else ""
    said = [t.text for t in session.transcript if t.role == "caller" and t.final and t.text.strip()]
    words = " ".join(said[-2:]).split()
    about = f' They said: "{" ".join(words[-INTRO_WORDS_MAX:])}".' if words else ""
    return f"Hello, this is the assistant. I have {who}{number} on the line for {department}.{about} I'm connecting you now."


@dataclass(slots=True)
class ActionCounters:
    """Engine-wide, for /metrics: (kind, outcome) -> count. Kinds: transfer, hangup, bring_in,
    still_there; outcomes: done, failed, refused."""

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
    token: str  # names the call's bridge and helper channels
    config: AppConfig  # as it was when the call came in

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
        # Set by call control: calls people in (bring_in), and ends the agent's part of the call
        # leaving the caller with them (the connection, the end reason).
        self.desk: PeopleDesk | None = None
        self.hand_off: Callable[[Connection, str], None] | None = None
        # A call with no bridge (the site's dialplan runs AudioSocket(), engine/dialplan_calls.py):
        # why no person can be brought in, and how a transfer goes instead of continue/redirect
        # (returns why it cannot, "" once under way).
        self.no_bridge = ""
        self.transfer_out: Callable[[ActionRecord], Awaitable[str]] | None = None

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
            if self.transfer_out is not None:
                why = await self.transfer_out(rec)
                if why:
                    await self._transfer_failed(rec, why)
                    return
            elif dept.endpoint:
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

    # ---- bringing a person in (Engine.bring_in)
    def bring_in(self, department: str, how: str, by: str) -> bool:
        """A person of one of the profile's departments is called in, ``how`` one of
        BRING_IN_WAYS; one action at a time, as for a transfer."""
        s = self.session
        refused = (
            f"not a way to bring a person in: {how!r} (one of {', '.join(BRING_IN_WAYS)})" if how not in BRING_IN_WAYS
            else "the call is ending" if self._host.ending
            else self.no_bridge if self.no_bridge
            else "the call is still connecting" if self._host.conversation is None or self.desk is None else ""
        )
        if refused:
            self._store.log(s.call_id, logging.WARNING, f"bringing in {department} by {by} refused: {refused}")
            return False
        if self.action is not None:
            self._store.log(s.call_id, logging.INFO, f"bringing in {department} asked for by {by} while {self.action.kind} is under way: ignored")
            return False
        rec = ActionRecord(kind="bring_in", by=by, reason=how, department=department)
        dept = self.profile.departments.get(department)
        if dept is None:
            rec.state = "refused"
            rec.detail = f"{department!r} is not a department of profile {s.profile} (it has: {', '.join(self.profile.departments) or 'none'})"
            self._record(rec, logging.WARNING)
            return False
        rec.target = dept.target
        self.action = rec
        self._record(rec, logging.INFO)
        self._host.spawn(self._bring_in(rec, dept.endpoint or f"Local/{dept.extension}@{dept.context}", how))
        return True

    async def _bring_in(self, rec: ActionRecord, endpoint: str, how: str) -> None:
        conv, pcall, desk = self._host.conversation, self._host.provider_call, self.desk
        assert conv is not None and pcall is not None and desk is not None
        s = self.session
        if how != "snoop":  # a snoop listens in: the agent goes on as it was
            self.watchdog.close()
            played = conv.hold()
            await pcall.cancel_response(played)
            await self._say_and_wait(bring_in_line(rec.department))
        rec.state = "calling"
        self._record(rec, logging.INFO)
        caller_id = f'"{_quote_free(s.caller_name)}" <{_quote_free(s.caller_number)}>' if s.caller_number else ""
        try:
            async with self._ringback(how != "snoop"):  # the caller of a snoop goes on with the agent
                answer = await desk.call_person(self._host.token, endpoint, caller_id, self._host.config.actions.bring_in_ring_s)
        except asyncio.CancelledError:  # the call ended while their phone rang (desk hangs it up)
            rec.state, rec.detail = "failed", "the call ended while their phone rang"
            self._record(rec, logging.INFO)
            raise
        if not isinstance(answer, Answered):
            await self._bring_in_failed(rec, answer.reason, how)
            return
        person = answer.channel.id
        conn = Connection(call_token=self._host.token, person_id=person, channels=[person], what=f"{rec.department} with {s.caller_number or s.call_id}")
        if self._host.ending or s.bridge_id is None:
            await desk.hang_up(person)
            rec.state, rec.detail = "failed", "the call ended as they answered"
            self._record(rec, logging.INFO)
            return
        try:
            if how == "snoop":
                await self._snoop(rec, conn)
                return
            if how == "introduce":
                await self._introduce(rec, person, s.bridge_id)
            else:
                await self._ari.add_channel(s.bridge_id, person)
        except PersonLeft as e:
            await self._bring_in_failed(rec, str(e), how)
            return
        except (AriError, AriUnavailable) as e:
            await desk.hang_up(person)
            await self._bring_in_failed(rec, f"could not connect them: {e}", how)
            return
        rec.state, rec.detail = "done", f"{answer.channel.name or person} connected with the caller; the agent left"
        self._record(rec, logging.INFO)
        conn.caller_id, conn.bridges = s.caller_channel_id, [s.bridge_id]
        assert self.hand_off is not None
        self.hand_off(conn, f"brought in {rec.department} ({rec.target})")

    async def _introduce(self, rec: ActionRecord, person: str, bridge: str) -> None:
        """The caller waits out of the bridge while the agent tells the person who is calling and
        why (the agent's own voice: the call's TTS, in either playback mode), then comes back."""
        s = self.session
        await self._ari.remove_channel(bridge, s.caller_channel_id)
        try:
            async with self._ringback():
                await self._ari.add_channel(bridge, person)
                await self._say_and_wait(introduction(s, rec.department))
        finally:
            await self._ari.add_channel(bridge, s.caller_channel_id)
        assert self.desk is not None
        if self.desk.gone(person):  # they hung up while they were told who is calling
            raise PersonLeft("the person hung up during the introduction")

    @contextlib.asynccontextmanager
    async def _ringback(self, wanted: bool = True) -> AsyncIterator[None]:
        """Ringback on the caller's channel for the block's length. It is stopped before the
        caller's bridge membership changes: Asterisk holds a removeChannel (and the caller's other
        commands) until a playback on their channel ends, and a ring tone never ends by itself."""
        pid = ""
        if wanted and self.desk is not None:
            try:
                pid = (await self._ari.play_on_channel(self.session.caller_channel_id, self.desk.new_id(f"{self._app}-ring-", self._host.token), RINGBACK)).id
            except (AriError, AriUnavailable) as e:
                self._store.log(self.call_id, logging.WARNING, f"no ringback for the caller: {e}")
        try:
            yield
        finally:
            if pid:
                try:
                    await self._ari.stop_playback(pid)
                except (AriError, AriUnavailable):
                    pass  # it ended with the caller's channel

    async def _snoop(self, rec: ActionRecord, conn: Connection) -> None:
        """The person hears both sides through a snoop channel on the caller's and can speak to the
        caller (whisper); the agent stays on. It ends when the person hangs up or the call ends."""
        desk = self.desk
        assert desk is not None
        s = self.session
        bridge = desk.new_id(f"{self._app}-br-sn-", self._host.token)  # call control's bridge prefix: a leftover is found
        try:
            snoop = await desk.snoop(self._host.token, s.caller_channel_id)
            conn.channels.append(snoop.id)
            await self._ari.create_bridge(bridge, name=f"aiagent snoop {self._host.token}")
            conn.bridges.append(bridge)
            await self._ari.add_channel(bridge, f"{conn.person_id},{snoop.id}")
            if s.bridge_id is not None:  # the caller's bridge mixes, so that the whisper is heard
                quiet = await desk.quiet_member(self._host.token)
                conn.channels.append(quiet.id)
                await self._ari.add_channel(s.bridge_id, quiet.id)
        except (AriError, AriUnavailable, TimeoutError) as e:
            conn.bridges.append(bridge)
            desk.connect(conn)
            desk.end(conn, f"snoop failed: {e}")
            rec.state, rec.detail = "failed", f"could not listen in: {e}"
            self._record(rec, logging.ERROR)
            self.action = None
            return
        desk.connect(conn)
        if self._host.ending:
            desk.call_ended(self._host.token)
        rec.state, rec.detail = "done", "listening in on a snoop channel; the agent stays on"
        self._record(rec, logging.INFO)
        self.action = None

    async def _bring_in_failed(self, rec: ActionRecord, why: str, how: str) -> None:
        """Nobody came: the caller is told (unless they never knew) and stays with the agent."""
        rec.state, rec.detail = "failed", why
        self._record(rec, logging.WARNING)
        self.action = None
        conv = self._host.conversation
        if conv is None or self._host.ending or how == "snoop":
            return
        await self._say_and_wait(not_reached_line(rec.department))
        conv.held = False
        self.watchdog.enabled = self.watch_silence
        self.watchdog.state(self.session.conversation)

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


def _quote_free(text: str) -> str:
    """Caller ID for the person's phone: no quotes or angle brackets of the caller's to break it."""
    return "".join(c for c in text if c not in '"<>')


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
