"""The simulated callers: each dials into Stasis (or StasisBroadcast), waits to be bridged with an
ExternalMedia channel, follows its script, hangs up and checks the engine cleaned up after it.
``SimCall`` is what happened to one of them, for the report (GET /sim/calls/{id})."""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping, Protocol

from media.frames import FRAME_S

from pbxsim.ari.channels import Channels
from pbxsim.ari.events import EventBus
from pbxsim.ari.external_media import ExternalMedia
from pbxsim.ari.model import NO_CONTENT, AriHttpError, AriRequest, BridgeTable, CallObserver, ChannelTable, Handler, IdSource, Reply, SimChannel
from pbxsim.media import Bridge, CallerMedia, ExternalMediaEndpoint, MediaClock, line_noise, load_wav_ulaw
from pbxsim.script import Dtmf, Line, Say, SayText, Step, spoken, wait_step

CLEANUP_GRACE_S = 3.0
BRIDGE_WAIT_S = 10.0


@dataclass(frozen=True)
class Broadcast:
    """The dialplan runs StasisBroadcast(timeout_ms, app_filter) instead of Stasis(app)."""

    timeout_ms: int = 500
    app_filter: str = ""  # a regular expression on app names ("": every connected app)


@dataclass
class _BroadcastState:
    apps: list[str]  # the apps that got CallBroadcast
    winner: str | None = None
    expired: bool = False  # nobody claimed in time: the dialplan went on
    claimed: asyncio.Event = field(default_factory=asyncio.Event)


class CallTables(Protocol):
    """What a call's report reads besides the call itself (SimPBX has these): declared here so
    the callers never import the server that assembles them."""

    @property
    def channels(self) -> Mapping[str, SimChannel]: ...

    @property
    def external_endpoints(self) -> Mapping[str, ExternalMediaEndpoint]: ...


@dataclass(kw_only=True)
class SimCall:
    """What happened to one simulated call, for the report."""

    id: str
    caller_number: str
    script: list[Step]
    accepted: bool = True
    answered: bool = False
    bridged: bool = False
    external_media: str | None = None
    bridge_id: str | None = None
    dialled: str = "s"
    ended_by: str | None = None
    ended_at: float | None = None
    hangup_cause: int | None = None
    left_stasis: str | None = None  # how: "continue to EXT@CONTEXT", "redirect to TECH/RES", "move to APP"
    left_stasis_at: float | None = None  # monotonic
    transferred_to: str | None = None  # where the caller went and was connected
    hangup_clean: bool | None = None
    error: str | None = None
    media: CallerMedia | None = None
    final_vars: dict[str, str] = field(default_factory=dict)  # the channel's variables when it ended
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    placed_at: float = field(default_factory=time.monotonic)

    def report(self, pbx: CallTables) -> dict[str, Any]:
        ext = pbx.external_endpoints.get(self.external_media or "")
        m = self.media
        ch = pbx.channels.get(self.id)
        return {
            "id": self.id,
            "caller_number": self.caller_number,
            "accepted": self.accepted,
            "answered": self.answered,
            "bridged": self.bridged,
            "external_media": self.external_media is not None,
            "external_media_channel": self.external_media,
            "rtp_sent": ext.packets_sent if ext else 0,
            "rtp_received": ext.packets_received if ext else 0,
            "caller_frames_sent": m.frames_sent if m else 0,
            "agent_audio_seconds": m.agent_audio_seconds if m else 0.0,
            # From dialling to the first agent audio the caller heard (the greeting, usually).
            "first_agent_audio_s": round(m.agent_frames[0][0] - self.placed_at, 3) if m and m.agent_frames else None,
            "barge_in_reactions_s": m.barge_in_reactions() if m else [],
            "turn_latencies_s": m.turn_latencies() if m else [],
            "transcript": (self.final_vars or (ch.vars if ch else {})).get("AIAGENT_TRANSCRIPT"),
            "dialled": self.dialled,
            "left_stasis": self.left_stasis,
            "transferred_to": self.transferred_to,
            "ended_by": self.ended_by,
            "hangup_cause": self.hangup_cause,
            "hangup_clean": self.hangup_clean,
            "error": self.error,
            "done": self.finished.is_set(),
            "duration_s": round((self.ended_at or time.monotonic()) - self.placed_at, 3),
        }


class CallBook(CallObserver):
    """The simulated calls by caller channel id, told by the ARI resources what befalls them."""

    def __init__(self) -> None:
        self.calls: dict[str, SimCall] = {}

    def answered(self, ch: SimChannel) -> None:
        if (rec := self.calls.get(ch.id)) is not None:
            rec.answered = True

    def left_stasis(self, ch: SimChannel, how: str) -> None:
        if (rec := self.calls.get(ch.id)) is not None:
            rec.left_stasis, rec.left_stasis_at = how, time.monotonic()

    def transferred(self, ch: SimChannel, where: str) -> None:
        if (rec := self.calls.get(ch.id)) is not None:
            rec.transferred_to = where

    def bridged(self, callers: list[SimChannel], external: SimChannel, bridge: Bridge) -> None:
        for c in callers:
            if (rec := self.calls.get(c.id)) is not None:
                rec.bridged, rec.external_media, rec.bridge_id = True, external.id, bridge.id

    def destroyed(self, ch: SimChannel, by: str, cause: int) -> None:
        rec = self.calls.get(ch.id)
        if rec is None:
            return
        if ch.kind == "caller":
            rec.final_vars = dict(ch.vars)
        if rec.ended_by is None:
            rec.ended_by, rec.ended_at, rec.hangup_cause = by, time.monotonic(), cause

    def forget_old(self, keep: int) -> list[SimCall]:
        """Forgets all but the newest ``keep`` finished calls (a --sim demo runs for days); returns
        the ones forgotten."""
        finished = [r for r in self.calls.values() if r.finished.is_set()]
        gone = finished[: max(0, len(finished) - keep)]
        for r in gone:
            del self.calls[r.id]
        return gone


class Callers:
    def __init__(
        self,
        *,
        book: CallBook,
        channels: ChannelTable,
        bridges: BridgeTable,
        ari_channels: Channels,
        external: ExternalMedia,
        events: EventBus,
        clock: MediaClock,
        ids: IdSource,
        rng: random.Random,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self.book = book
        self.channels = channels
        self.bridges = bridges
        self.ari_channels = ari_channels
        self.external = external
        self.events = events
        self.clock = clock
        self.ids = ids
        self.rng = rng  # the order of a broadcast
        self.spawn = spawn
        self.broadcasts: dict[str, _BroadcastState] = {}  # StasisBroadcast() calls by channel id
        self._speech_cache: dict[str, bytes] = {}

    def handlers(self) -> dict[str, Handler]:
        return {"events.claimChannel": self.claim}

    def place(
        self,
        steps: list[Step],
        *,
        caller_number: str,
        app: str,
        args: list[str],
        line: Line,
        dialled: str,
        broadcast: Broadcast | None,
        keep_finished: int,
    ) -> SimCall:
        """See SimPBX.place_call; ``keep_finished``: how many reports of ended calls to keep."""
        for st in steps:  # fail now, not in the middle of the call
            if isinstance(st, Say):
                self._speech(st.wav)
        cid = self.ids.new()
        media = CallerMedia(rate=line.rate, noise=line_noise(line.noise_dbfs, seed=len(self.book.calls)) if line.noise_dbfs is not None else b"")
        ch = SimChannel(
            id=cid, name=f"PJSIP/{caller_number or 'sim'}-{cid}", kind="caller", media=media, caller_number=caller_number, caller_name="Sim Caller",
            app=app, app_args=list(args), context="from-pstn", exten=dialled, priority=2,
        )
        rec = SimCall(id=cid, caller_number=caller_number, script=steps, media=media, dialled=dialled)
        for gone in self.book.forget_old(keep_finished):
            if gone.external_media is not None and gone.external_media not in self.channels.by_id:
                self.external.endpoints.pop(gone.external_media, None)
        self.book.calls[cid] = rec
        if broadcast is not None:
            ch.app = None
            self.channels.by_id[cid] = ch
            self.spawn(self._broadcast(ch, rec, broadcast))
            return rec
        if not self.events.app_active(app):
            # As Asterisk: an originate into an app with no WebSocket is hung up at once.
            rec.accepted = False
            rec.error = f"Stasis app '{app}' not active"
            rec.finished.set()
            return rec
        self.channels.by_id[cid] = ch
        ch.in_stasis = True
        self.events.emit(app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})
        self.spawn(self._run(ch, rec))
        return rec

    async def _broadcast(self, ch: SimChannel, rec: SimCall, b: Broadcast) -> None:
        """StasisBroadcast(timeout, app_filter): CallBroadcast to each matching app in a shuffled
        order (as Asterisk does, for a fair race), then wait for the first claim."""
        apps = [a for a in self.events.active_apps() if not b.app_filter or re.search(b.app_filter, a)]
        self.rng.shuffle(apps)
        claim = self.broadcasts[ch.id] = _BroadcastState(apps)
        for app in apps:
            self.events.emit(app, {"type": "CallBroadcast", "channel": ch.to_json(), "caller": ch.caller_number, "called": rec.dialled})
        try:
            await asyncio.wait_for(claim.claimed.wait(), b.timeout_ms / 1000)
        except TimeoutError:
            claim.expired = True
            rec.accepted = False
            rec.error = "no app claimed the call (STASISSTATUS=TIMEOUT)"
            if ch.id in self.channels.by_id:
                self.ari_channels.hangup(ch, by="dialplan")
            rec.finished.set()

    def claim(self, req: AriRequest) -> Reply:
        ch = self.channels.by_id.get(req.query["channelId"])
        claim = self.broadcasts.get(req.query["channelId"])
        if ch is None or claim is None or claim.expired:
            raise AriHttpError(404, "Channel not found or not in broadcast state")
        if claim.winner is not None:
            raise AriHttpError(409, "Channel has already been claimed by another application")
        app = req.query["application"]
        claim.winner = app
        claim.claimed.set()
        ch.app = app
        ch.in_stasis = True
        for other in claim.apps:
            self.events.emit(other, {"type": "CallClaimed", "channel": ch.to_json(), "winner_app": app})
        self.events.emit(app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})
        rec = self.book.calls.get(ch.id)
        if rec is not None:
            self.spawn(self._run(ch, rec))
        return NO_CONTENT

    async def _run(self, ch: SimChannel, rec: SimCall) -> None:
        media = ch.media
        assert isinstance(media, CallerMedia)
        try:
            deadline = time.monotonic() + BRIDGE_WAIT_S
            while not rec.bridged and ch.id in self.channels.by_id and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not rec.bridged:
                if ch.id in self.channels.by_id:
                    rec.error = "never bridged with ExternalMedia"
                    self.ari_channels.hangup(ch, by="caller")
                return
            self.clock.callers.add(media)
            for step in rec.script:
                if ch.id not in self.channels.by_id:
                    break
                await self.run_step(ch, media, step)
            self.ari_channels.hangup(ch, by="caller")
            # Did the engine clean up what served this call?
            end = time.monotonic() + CLEANUP_GRACE_S
            while time.monotonic() < end and not self._cleaned(rec):
                await asyncio.sleep(FRAME_S)
            rec.hangup_clean = self._cleaned(rec)
        finally:
            rec.finished.set()

    async def run_step(self, ch: SimChannel, media: CallerMedia, step: Step) -> None:
        """One step of a phone's script (a caller's, or a person's brought into a call)."""
        alive = lambda: ch.id in self.channels.by_id  # noqa: E731
        if isinstance(step, (Say, SayText)):
            media.say(await spoken(step, self._speech))  # speaks from the next tick on
            while alive() and not media.speech_done:
                await asyncio.sleep(0.01)
        elif isinstance(step, Dtmf):
            await self.ari_channels.press_keys(ch, step.digits, step.duration_ms)
        else:
            await wait_step(step, alive, media.agent_frames)

    def _speech(self, wav: str) -> bytes:
        cached = self._speech_cache.get(wav)
        if cached is None:
            cached = self._speech_cache[wav] = load_wav_ulaw(wav)
        return cached

    def _cleaned(self, rec: SimCall) -> bool:
        live = self.channels.by_id
        return rec.id not in live and rec.external_media not in live and rec.bridge_id not in self.bridges.by_id
