"""Bringing a person into a call (Engine.bring_in): their phone called over ARI, what Asterisk
reports of it (answered, busy, no answer, no such extension), and what is left once the agent has
gone: the caller and the person in the call's bridge, cleaned up when either hangs up.

The person's channel is originated into the engine's own app with ``appArgs`` ``bring-in,TOKEN``
and the id ``APP-hl-TOKEN-N``, so that call control knows it for a helper leg of that call and not
a new caller. A snoop channel (``APP-sn-TOKEN-N``) listens to the caller's channel for the "snoop"
way. What each way does with them is the call's actions' (engine/actions.py); docs/operations.md,
"Bringing a person in", says what the caller and the person hear.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.ari.models import AriEvent, Channel, ChannelDestroyed, ChannelHangupRequest, Dial, StasisEnd, StasisStart
from engine.sessions import SessionStore

log = logging.getLogger(__name__)

HELPER_ARG = "bring-in"  # the first Stasis argument of a person's channel (and of a snoop channel)
ANSWER_MARGIN_S = 5.0  # beyond the ring time: Asterisk's own timeout ends the dial first
GONE_KEPT = 256
QUIET_HOST = "127.0.0.1:9"  # the discard port, on Asterisk's host: where a quiet member's RTP goes


@dataclass(frozen=True, slots=True)
class Answered:
    channel: Channel


@dataclass(frozen=True, slots=True)
class NotReached:
    reason: str  # in words, from what Asterisk reported: "busy", "no answer in 30 s", ...


PersonOutcome = Answered | NotReached


def why_not_reached(dialstatus: str, cause: int, cause_txt: str, ring_s: int) -> str:
    """What a person's channel ended with before answering, in words. Measured on Asterisk 22 with
    Local channels: a missing extension or context ends the channel at once with cause 0 and no
    Dial event; busy is Dial BUSY (the channel's own cause stays 0); no answer is cause 19 when the
    originate's timeout ends the ringing."""
    if dialstatus == "BUSY" or cause == 17:
        return "busy"
    if dialstatus == "NOANSWER" or cause in (18, 19):
        return f"no answer in {ring_s} s"
    if dialstatus in ("CONGESTION", "CHANUNAVAIL") or cause in (34, 38, 41, 42):
        return f"unreachable ({dialstatus.lower() or cause_txt or cause})"
    if cause in (1, 3, 28):
        return f"no such number ({cause_txt or cause})"
    if not dialstatus:
        return "could not be called: no such extension or endpoint"
    return f"hung up before answering (cause {cause}{' ' + cause_txt if cause_txt else ''})"


@dataclass(eq=False, slots=True)
class _Ringing:
    """A person's channel being called: resolved when it enters Stasis (answered) or ends."""

    channel_id: str
    ring_s: int
    result: asyncio.Future[PersonOutcome]
    dialstatus: str = ""


@dataclass(eq=False, slots=True)
class Connection:
    """What a brought-in person is connected through: their channel, and the channels and bridges
    to clean up when it ends. ``caller_id``/``caller_bridge`` are set once the agent has left (the
    caller and the person talk in the call's bridge); a snoop has its own channel and bridge and
    ends with the call."""

    call_token: str
    person_id: str
    channels: list[str] = field(default_factory=list)  # hung up at the end (the person first)
    bridges: list[str] = field(default_factory=list)  # destroyed at the end
    caller_id: str | None = None  # the caller, once the agent has left
    what: str = ""  # for the log: "billing with the caller"
    ending: bool = False

    def owns(self, channel_id: str) -> bool:
        return channel_id in self.channels or channel_id == self.caller_id


class PeopleDesk:
    """Calls people for the calls of one engine, and looks after their connections."""

    def __init__(self, *, ari: AriClient, app: str, store: SessionStore, spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]) -> None:
        self.ari = ari
        self.app = app
        self.store = store
        self._spawn = spawn
        self.helper_prefix = f"{app}-hl-"
        self.snoop_prefix = f"{app}-sn-"
        self._ringing: dict[str, _Ringing] = {}
        self._entering: dict[str, asyncio.Future[Channel]] = {}  # snoop and quiet channels until their StasisStart
        self.connections: list[Connection] = []
        # Answered people who hung up before their connection was made (the newest GONE_KEPT).
        self._gone: dict[str, None] = {}
        self._cleanups: set[asyncio.Task[None]] = set()  # connections and channels being cleaned up: shutdown waits for them
        self._seq = 0

    def new_id(self, prefix: str, token: str) -> str:
        self._seq += 1
        return f"{prefix}{token}-{self._seq}"

    # ---- calling a person
    async def call_person(self, token: str, endpoint: str, caller_id: str, ring_s: int) -> PersonOutcome:
        """Rings ``endpoint`` for up to ``ring_s``; the person's channel once it answered (in
        Stasis, ready for a bridge), or why it was not reached."""
        cid = self.new_id(self.helper_prefix, token)
        ringing = _Ringing(cid, ring_s, asyncio.get_running_loop().create_future())
        self._ringing[cid] = ringing  # before the request: its StasisStart can beat the reply
        try:
            try:
                await self.ari.originate(cid, endpoint, self.app, [HELPER_ARG, token], caller_id, ring_s)
            except AriError as e:
                return NotReached(f"could not be called: {e.message or e.status}")
            except AriUnavailable as e:
                return NotReached(f"could not be called: Asterisk unreachable ({e})")
            try:
                return await asyncio.wait_for(asyncio.shield(ringing.result), ring_s + ANSWER_MARGIN_S)
            except TimeoutError:
                await self.hang_up(cid)
                return NotReached(f"no answer in {ring_s} s")
        except asyncio.CancelledError:
            self._clean_up(self.hang_up(cid))  # the call ended while the person's phone rang
            raise
        finally:
            self._ringing.pop(cid, None)

    async def snoop(self, token: str, caller_id: str) -> Channel:
        """A snoop channel on the caller: it hears both directions, and what it is sent the caller
        hears (whisper out). Returned once it is in Stasis."""
        sid = self.new_id(self.snoop_prefix, token)
        return await self._in_stasis(sid, self.ari.snoop(caller_id, sid, self.app, [HELPER_ARG, token]))

    async def quiet_member(self, token: str) -> Channel:
        """A channel that says nothing, for the caller's bridge while a snoop whispers to the
        caller: a whisper is mixed into the audio the caller is sent and is lost when none is
        (measured: the caller heard the person only while the agent spoke). With a third member
        the bridge mixes (softmix) and sends the caller a frame every 20 ms. An ExternalMedia
        channel whose RTP goes to the discard port of Asterisk's own host and that is sent nothing."""
        qid = self.new_id(self.helper_prefix, token) + "-quiet"
        return await self._in_stasis(qid, self.ari.external_media(qid, self.app, QUIET_HOST, "ulaw"))

    async def _in_stasis(self, cid: str, create: Coroutine[Any, Any, Channel]) -> Channel:
        fut: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
        self._entering[cid] = fut  # before the request: its StasisStart can beat the reply
        try:
            await create
            # Bridged before its StasisStart it would be refused (422), as any channel.
            return await asyncio.wait_for(asyncio.shield(fut), 5.0)
        except BaseException:
            self._clean_up(self.hang_up(cid))
            raise
        finally:
            self._entering.pop(cid, None)

    def connect(self, conn: Connection) -> None:
        self.connections.append(conn)
        if any(self.gone(c) for c in conn.channels):
            self.end(conn, "the person had hung up")

    def gone(self, channel_id: str) -> bool:
        """The person's (or a snoop's) channel ended before its connection was made."""
        return channel_id in self._gone

    def connection_of(self, token: str) -> list[Connection]:
        return [c for c in self.connections if c.call_token == token]

    # ---- events (call control hands every event here first)
    def on_event(self, event: AriEvent) -> bool:
        """True when the event was about a person's or snoop channel (or a connection's caller)
        and has been dealt with."""
        if isinstance(event, Dial):
            r = self._ringing.get(event.peer.id)
            if r is not None and event.dialstatus:
                r.dialstatus = event.dialstatus
            return r is not None
        if not isinstance(event, (StasisStart, StasisEnd, ChannelHangupRequest, ChannelDestroyed)):
            return False
        cid = event.channel.id
        if isinstance(event, StasisStart):
            if (r := self._ringing.get(cid)) is not None:
                if not r.result.done():
                    r.result.set_result(Answered(event.channel))
                return True
            if (f := self._entering.get(cid)) is not None:
                if not f.done():
                    f.set_result(event.channel)
                return True
            if cid.startswith((self.helper_prefix, self.snoop_prefix)) and not any(c.owns(cid) for c in self.connections):
                self._clean_up(self.hang_up(cid))  # its call ended while it was being set up
                return True
        r = self._ringing.get(cid)
        if r is not None:
            if isinstance(event, ChannelDestroyed) and not r.result.done():
                r.result.set_result(NotReached(why_not_reached(r.dialstatus, event.cause, event.cause_txt, r.ring_s)))
            return True
        if cid.split(";")[0] in self._ringing:
            return True  # the other half of a Local person's channel
        for conn in self.connections:
            if conn.owns(cid):
                if not isinstance(event, StasisStart) and not conn.ending:
                    who = "the caller" if cid == conn.caller_id else "the person" if cid == conn.person_id else cid
                    self.end(conn, f"{who} left")
                return True
        if cid.startswith((self.helper_prefix, self.snoop_prefix)):
            if not isinstance(event, StasisStart):
                self._gone[cid] = None  # answered, not connected yet (an introduction under way)
                while len(self._gone) > GONE_KEPT:
                    del self._gone[next(iter(self._gone))]
            return True
        return False

    # ---- ending
    def end(self, conn: Connection, why: str) -> asyncio.Task[None] | None:
        if conn.ending:
            return None
        conn.ending = True
        return self._clean_up(self._end(conn, why))

    def _clean_up(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._spawn(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _end(self, conn: Connection, why: str) -> None:
        self.store.log(None, logging.INFO, f"brought-in connection ({conn.what}) ended: {why}")
        for cid in [*conn.channels, *([conn.caller_id] if conn.caller_id else [])]:
            await self.hang_up(cid)
        for bid in conn.bridges:
            await _quietly(self.ari.destroy_bridge(bid), f"bridge {bid}")
        if conn in self.connections:
            self.connections.remove(conn)

    async def hang_up(self, channel_id: str) -> None:
        await _quietly(self.ari.hangup(channel_id), f"channel {channel_id}")

    def call_ended(self, token: str) -> list[asyncio.Task[None]]:
        """The call of ``token`` has ended: its snoops (connections without the caller) end too."""
        self._gone = {c: None for c in self._gone if token not in c}
        tasks = []
        for conn in self.connection_of(token):
            if conn.caller_id is None and (t := self.end(conn, "the call ended")) is not None:
                tasks.append(t)
        return tasks

    async def shutdown(self) -> None:
        """Every connection ends (the ones already ending finish their clean-up)."""
        for c in list(self.connections):
            self.end(c, "engine shutdown")
        await asyncio.gather(*self._cleanups, return_exceptions=True)

    # ---- reconcile
    def owned_channels(self) -> set[str]:
        out = set(self._ringing) | set(self._entering)
        for c in self.connections:
            out.update(c.channels)
            if c.caller_id:
                out.add(c.caller_id)
        return out

    def owned_bridges(self) -> set[str]:
        return {b for c in self.connections for b in c.bridges}


async def _quietly(coro: Coroutine[Any, Any, Any], what: str) -> None:
    """A clean-up step: gone already is what was wanted; anything else is logged and the next goes on."""
    try:
        await coro
    except AriError as e:
        if e.status != 404:
            log.warning("bring-in clean-up of %s failed: %s", what, e)
    except AriUnavailable as e:
        log.warning("bring-in clean-up of %s deferred, ARI unreachable: %s", what, e)
