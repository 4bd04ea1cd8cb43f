"""Calls the site's dialplan sends straight to the engine's AudioSocket server, instead of Stasis
(audiosocket.dialplan_calls = true):

    exten => _X.,1,Answer()
     same => n,AudioSocket(${UUID()},ENGINE_HOST:18090)
     same => n,GotoIf($["${SHARED(AIAGENT_TRANSFER)}" != ""]?${SHARED(AIAGENT_TRANSFER)})
     same => n,Hangup()

A connection whose UUID no call waits for becomes a call (engine/audiosocket.py ``on_stranger``).
Its caller's channel is found over ARI (measured on Asterisk 22: ``GET /channels`` lists it, not in
Stasis, with dialplan app ``AudioSocket`` and app data ``UUID,HOST:PORT`` by the time the UUID
arrives), and the app subscribes to it for its hangup; without ARI the call runs on the socket
alone. The call is an ordinary Call with no bridge and no media channel: stream playback only, its
keys from the socket's DTMF messages (ARI's ChannelDtmfReceived carries the same digits).

The agent hangs up with the socket's hangup message: AudioSocket() returns and the dialplan goes on.
A transfer sets the caller channel's ``SHARED(AIAGENT_TRANSFER)`` to ``context,exten,priority``
first (``POST /asterisk/variable``: ARI sets no plain variable on a channel outside Stasis, 409
"Channel not in Stasis application"), and the dialplan's GotoIf sends the caller there; call
control watches the caller reach the target as for a ``continue`` transfer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from typing import Any, Callable, Coroutine, Mapping, Protocol

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.ari.models import Channel
from engine.audiosocket import AudioSocketLink, AudioSocketTransport
from engine.call import Call, CallServices, ProviderUnavailable
from engine.capacity import Capacity, Overload
from engine.config import AppConfig
from engine.refusals import Reason, Refusals
from engine.sessions import ActionRecord, CallSession, CallState, ProviderSession, SessionStore
from engine.transports import MediaSetupError, Transports
from runtime.clock import sleep

class CallControl(Protocol):
    """What these calls take from call control (engine/calls.py CallController): its calls and
    services, and the steps every call shares (setup failures, keys, transfers, teardown)."""

    app: str
    ari: AriClient
    config: AppConfig
    store: SessionStore
    services: CallServices
    transports: Transports
    overload: Overload
    refusals: Refusals
    closing: bool
    calls: dict[str, Call]
    by_token: dict[str, Call]
    provider_for_new_call: Callable[[str], str]

    @property
    def transferred(self) -> Mapping[str, object]: ...  # callers transferred by continue, watched
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def models_full(self, provider: str) -> Capacity | None: ...
    def on_dtmf(self, c: Call, digit: str) -> None: ...
    def transfer_caller(self, c: Call, rec: ActionRecord) -> None: ...
    def end_failed(self, call: Call, reason: str) -> None: ...
    def setup_failed(self, h: Call, why: str) -> None: ...
    def begin_teardown(self, h: Call, reason: str, hangup_caller: bool) -> asyncio.Task[None]: ...

log = logging.getLogger(__name__)

FIND_CHANNEL_S = 1.5  # the caller's channel over ARI: given up after this (the call runs on the socket alone)
FIND_INTERVAL_S = 0.1
TRANSFER_VARIABLE = "AIAGENT_TRANSFER"  # read by the dialplan as ${SHARED(AIAGENT_TRANSFER)}
NO_BRIDGE = "the call came from the dialplan's AudioSocket() (no Stasis, no bridge)"


class DialplanCalls:
    """The dialplan-AudioSocket() calls of one CallController (``control``)."""

    def __init__(self, control: CallControl) -> None:
        self.control = control
        self.tokens: set[str] = set()  # the calls of this kind
        t = control.transports.by_name.get("audiosocket")
        if isinstance(t, AudioSocketTransport):
            t.on_stranger = self.accept

    def owns(self, h: Call) -> bool:
        return h.token in self.tokens

    # ---- a new connection
    def accept(self, link: AudioSocketLink) -> None:
        """A connection no call waits for (its UUID said): it becomes a call once its caller's channel
        is looked up."""
        self.control.spawn(self._take(link))

    async def _take(self, link: AudioSocketLink) -> None:
        c = self.control
        try:
            ch = None if c.closing else await self._find_channel(link.uuid)
        except BaseException:
            link.close()
            raise
        why = self._refusal(ch)
        if why:
            self._refuse(link, ch, *why)
            return
        cfg = c.config
        profile = cfg.profile_for((), ch.dialplan.exten if ch is not None else "")
        provider = c.provider_for_new_call(cfg.profiles[profile].provider)
        cid = ch.id if ch is not None else link.uuid
        session = CallSession(
            call_id=cid,
            caller_channel_id=cid,
            caller_channel_name=ch.name if ch is not None else "",
            caller_number=ch.caller.number if ch is not None else "",
            caller_name=ch.caller.name if ch is not None else "",
            dialled=ch.dialplan.exten if ch is not None else "",
            profile=profile,
            provider=ProviderSession(provider),
            transport="audiosocket",
        )
        # No bridge to play files into: this call streams whatever playback.downstream_mode says.
        services = c.services
        if cfg.playback.downstream_mode != "stream":
            services = dataclasses.replace(services, config=cfg.model_copy(update={"playback": cfg.playback.model_copy(update={"downstream_mode": "stream"})}))
        call = Call(services, session, uuid.uuid4().hex[:12], self._end)
        call.actions.no_bridge = NO_BRIDGE
        call.actions.transfer_out = lambda rec, h=call: self._transfer(h, rec)
        self.tokens.add(call.token)
        c.calls[cid] = call
        c.by_token[call.token] = call
        c.store.add(session)
        who = f"{ch.caller.number or 'unknown'} ({ch.name}) to {ch.dialplan.exten or '?'}" if ch is not None else "an unknown caller (no channel found over ARI with its UUID: the call runs on the socket alone)"
        c.store.log(cid, logging.INFO, f"call from {who} through the dialplan's AudioSocket() (UUID {link.uuid}), profile {profile}, provider {provider}")
        if cfg.playback.downstream_mode != "stream":
            c.store.log(cid, logging.INFO, f"file playback refused: {NO_BRIDGE}; the agent's audio streams over the socket")
        call.setup_task = call.spawn(self._setup(call, link, ch))

    async def _find_channel(self, uid: str) -> Channel | None:
        """The channel whose dialplan runs AudioSocket(UUID,...) (none within FIND_CHANNEL_S: a site
        with ARI unreachable, or a UUID the dialplan did not take from ``${UUID()}``)."""
        c = self.control
        clock = c.services.clock
        until = clock.now() + FIND_CHANNEL_S
        key = uid.lower()
        while True:
            try:
                for ch in await c.ari.list_channels():
                    if ch.dialplan.app_name.lower() == "audiosocket" and ch.dialplan.app_data.lower().startswith(key):
                        return ch
            except (AriError, AriUnavailable) as e:
                log.info("AudioSocket call %s: its channel cannot be looked up over ARI (%s)", uid, e)
                return None
            if clock.now() >= until:
                return None
            await sleep(clock, FIND_INTERVAL_S)

    def _refusal(self, ch: Channel | None) -> tuple[Reason, str] | None:
        c = self.control
        if c.closing:
            return Reason.SHUTDOWN, "the engine is shutting down"
        if len(c.calls) >= c.config.rtp.max_calls:
            c.store.calls_rejected_over_capacity += 1
            return Reason.MAX_CALLS, f"over max_calls ({c.config.rtp.max_calls} calls at once)"
        profile = c.config.profile_for((), ch.dialplan.exten if ch is not None else "")
        full = c.models_full(c.provider_for_new_call(c.config.profiles[profile].provider))
        if full is not None:
            c.overload.call_refused()
            return Reason.MODELS, f"the models are at capacity ({full.calls} calls at once; {full.basis})"
        return None

    def _refuse(self, link: AudioSocketLink, ch: Channel | None, reason: Reason, why: str) -> None:
        """Turned away: the hangup message sends the caller on in the dialplan (its next line)."""
        link.close()
        if ch is not None:
            profile = self.control.config.profile_for((), ch.dialplan.exten)
            self.control.refusals.refused(ch, [], profile, reason, why, "sent back to the dialplan (AudioSocket hangup)")
        else:
            log.warning("AudioSocket call %s from %s refused: %s (sent back to the dialplan)", link.uuid, link.conn.peer, why)

    # ---- setup
    async def _setup(self, h: Call, link: AudioSocketLink, ch: Channel | None) -> None:
        c = self.control
        s = h.session
        try:
            if ch is not None:
                try:
                    # Measured: a subscribed channel outside Stasis gets ChannelHangupRequest,
                    # ChannelDestroyed, ChannelDialplan, ChannelDtmfReceived and ChannelVarset.
                    await c.ari.subscribe(c.app, f"channel:{ch.id}")
                except (AriError, AriUnavailable) as e:
                    c.store.log(s.call_id, logging.WARNING, f"no ARI subscription to the caller's channel ({e}): its hangup is seen on the socket only")
            link.on_dtmf = lambda digit: c.on_dtmf(h, digit)
            await h.start_media(link)
            c.store.set_state(s, CallState.STREAMING)
            h.bridged()  # no bridge: the socket is the caller's own channel, so audio may go out now
            c.store.log(s.call_id, logging.INFO, f"streaming over the dialplan's AudioSocket(); Asterisk at {s.media_remote}")
        except asyncio.CancelledError:
            raise
        except (AriError, AriUnavailable, ProviderUnavailable, MediaSetupError) as e:
            c.setup_failed(h, str(e))
        except Exception as e:  # a provider that fails to start: this call only
            log.exception("call %s setup failed", s.call_id)
            c.setup_failed(h, f"{e.__class__.__name__}: {e}")

    def _end(self, h: Call, reason: str) -> None:
        """The call ends on a failure, or its socket ended: with no ARI that is how a caller's
        hangup shows (an EOF from app_audiosocket), said as such in the history."""
        link = h.media.link if h.media is not None else None
        if isinstance(link, AudioSocketLink) and link.caller_gone:
            reason = "caller hung up (its AudioSocket connection closed)"
        self.control.end_failed(h, reason)

    # ---- actions
    async def _transfer(self, h: Call, rec: ActionRecord) -> str:
        """The dialplan's GotoIf takes the caller to the department once AudioSocket() returns: the
        target is set on the caller's channel, then the call ends with the socket's hangup message.
        Returns why it cannot be done ("" when under way)."""
        c = self.control
        s = h.session
        dept = h.profile.departments[rec.department]
        if dept.endpoint:
            return f"an endpoint transfer ({dept.endpoint}, ARI redirect) needs the caller in Stasis: {NO_BRIDGE}"
        if not s.caller_channel_name:
            return "the caller's channel was not found over ARI: its dialplan cannot be told where to go"
        target = f"{dept.context},{dept.extension},{dept.priority}"
        await c.ari.request("POST", "/asterisk/variable", {"variable": f"SHARED({TRANSFER_VARIABLE},{s.caller_channel_name})", "value": target}, reply=False)
        c.store.log(s.call_id, logging.INFO, f"SHARED({TRANSFER_VARIABLE}) = {target} on {s.caller_channel_name}: the AudioSocket hangup sends the caller there")
        c.transfer_caller(h, rec)  # the caller is watched at the target; the teardown says hangup on the socket
        return ""

    # ---- teardown and reconcile
    async def released(self, h: Call) -> None:
        """The call's own parts are gone (its link closed: the dialplan goes on). The subscription to
        the caller's channel goes too, unless a transfer still watches it (call control ends it)."""
        c = self.control
        s = h.session
        if not s.caller_channel_name or s.caller_channel_id in c.transferred:
            return
        try:
            await c.ari.unsubscribe(c.app, f"channel:{s.caller_channel_id}")
        except (AriError, AriUnavailable) as e:
            # The channel gone (the caller hung up) takes its subscription with it (measured).
            log.debug("[%s] unsubscribe from the caller's channel: %s", s.call_id, e)

    def ended(self, h: Call) -> None:
        self.tokens.discard(h.token)

    def reconcile(self, h: Call, channels: dict[str, Channel], reconnect: bool) -> None:
        """After an ARI reconnect: such a call has no bridge and no media channel to lose; its caller's
        channel (if one was found) must still be there, and is subscribed to again."""
        c = self.control
        s = h.session
        if not s.caller_channel_name:
            return  # runs on its socket alone: the socket says when it ends
        if s.caller_channel_id not in channels:
            c.begin_teardown(h, "caller left while ARI was disconnected", hangup_caller=False)
            return
        if reconnect:
            c.store.log(s.call_id, logging.INFO, "call carried on across ARI reconnect")
            h.spawn(self._resubscribe(h))

    async def _resubscribe(self, h: Call) -> None:
        c = self.control
        try:
            await c.ari.subscribe(c.app, f"channel:{h.session.caller_channel_id}")
        except (AriError, AriUnavailable) as e:
            c.store.log(h.call_id, logging.WARNING, f"no ARI subscription to the caller's channel after the reconnect ({e})")
