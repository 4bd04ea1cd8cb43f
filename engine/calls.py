"""Call control over ARI: answer each caller, set up its bridge and media channel (over the call's
transport: engine/transports.py), tear it all down, and reconcile with what Asterisk holds after a reconnect.

What a call does once its media flows is the Call's (engine/call.py); one Call per call owns
its tasks, media, provider session and playback, so that one call's failure or hangup never
touches another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
from dataclasses import dataclass
import logging
import uuid
from typing import Any, Callable, Coroutine, Iterator

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.ari.models import (
    ApplicationReplaced,
    AriEvent,
    CallBroadcast,
    Channel,
    ChannelDestroyed,
    ChannelDialplan,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    PlaybackFinished,
    PlaybackStarted,
    StasisEnd,
    StasisStart,
)
from engine.actions import TRANSFER_CHECK_S, ActionCounters, report_action
from engine.handoff import Connection, PeopleDesk
from engine.call import Call, CallServices, ProviderLookup, ProviderUnavailable
from engine.capacity import Capacity, Overload
from engine.dialplan_calls import DialplanCalls
from runtime.clock import Clock, LoopClock
from engine.config import AppConfig
from runtime.ratelimit import RateLimitedLog
from engine.recording import Recordings
from engine.refusals import Reason, Refusals
from engine.status import ConversationCounters, PlaybackCounters
from engine.pacer import Outbound
from engine.transports import MediaSetupError, Transports
from engine.sessions import ActionRecord, CallSession, CallState, ProviderSession, SessionStore, TurnTimeline
from runtime.tasks import OwnedTasks
from providers.base import ActionRequest

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log)

EXTERNAL_MEDIA_READY_TIMEOUT_S = 5.0
ORPHAN_GRACE_S = 1.0
# A broadcast call is claimed after this much delay times the share of max_calls in use: the least
# loaded engine tends to win (StasisBroadcast's own default timeout is 500 ms).
CLAIM_SPREAD_S = 0.1
# An offer passed over only because this engine's claims in flight filled its room is tried again
# when one of those claims is lost, for this long (StasisBroadcast waits 500 ms by default; a late
# claim is simply refused).
OFFER_KEEP_S = 3.0
# ARI requests have their own timeout (asterisk.request_timeout_s); this bounds a teardown whose
# every step is slow, so that a call never holds its max_calls slot for long.
TEARDOWN_TIMEOUT_S = 20.0


class ExternalMediaLost(Exception):
    pass


@dataclass(slots=True)
class _Transferred:
    """A caller transferred by continue, watched for TRANSFER_CHECK_S."""

    session: CallSession
    rec: ActionRecord
    at: float  # the clock's, when the caller left Stasis
    reached: bool = False  # a dialplan step ran at the target


@contextlib.contextmanager
def _step(call_id: str, what: str) -> Iterator[None]:
    """One teardown step: its failure is logged and the next step runs."""
    try:
        yield
    except Exception as e:
        log.error("[%s] teardown: %s failed: %s", call_id, what, e, exc_info=e)


class CallController:
    def __init__(
        self,
        *,
        config: AppConfig,
        ari: AriClient,
        store: SessionStore,
        transports: Transports,
        outbound: Outbound,
        provider_for_new_call: Callable[[str], str],
        get_provider: ProviderLookup,
        observe_turn: Callable[[TurnTimeline], None] = lambda t: None,
        clock: Clock | None = None,
        ready_for_calls: Callable[[], bool] = lambda: True,
        recordings: Recordings | None = None,
        model_capacity: Callable[[], Capacity] = lambda: Capacity(None, "no model runs on this machine"),
    ) -> None:
        self.config = config
        self.app = config.asterisk.app
        self.ari = ari
        self.store = store
        self.transports = transports
        self.provider_for_new_call = provider_for_new_call
        self._ready_for_calls = ready_for_calls
        self._model_capacity = model_capacity
        self._claiming: set[str] = set()  # broadcast calls this engine is claiming
        self._passed_over: dict[str, float] = {}  # broadcast offers left only for claims in flight: channel -> when
        self.playback_counters = PlaybackCounters()
        self.conversation_counters = ConversationCounters()
        self.action_counters = ActionCounters()
        clock = clock or LoopClock()
        self.overload = Overload(clock, store)  # callers turned away at the models' capacity, turns refused
        self.refusals = Refusals(clock, store)  # every caller turned away, for the log, the history and /health
        self.services = CallServices(
            config=config, ari=ari, store=store, outbound=outbound, get_provider=get_provider, clock=clock,
            playback_counters=self.playback_counters, conversation_counters=self.conversation_counters,
            action_counters=self.action_counters, observe_turn=observe_turn, recordings=recordings, overload=self.overload,
        )
        # Callers transferred by continue, watched for a moment: a hangup this soon means the PBX
        # dropped them (the target does not exist).
        self.transferred: dict[str, _Transferred] = {}
        self.calls: dict[str, Call] = {}  # by the caller's channel id
        self.by_token: dict[str, Call] = {}
        self._pending_external: dict[str, asyncio.Future[Channel]] = {}
        self._tasks = OwnedTasks("call control")  # work of no call: rejects, orphans, teardowns
        self.ext_prefix = f"{self.app}-em-"
        self.bridge_prefix = f"{self.app}-br-"
        self.replaced = False
        self.closing = False
        self.spawn = self._tasks.spawn
        self._ended_call_task_errors = 0
        # People brought into calls: their channels, and the caller and person left together
        # once the agent has gone (engine/handoff.py).
        self.desk = PeopleDesk(ari=ari, app=self.app, store=store, spawn=self.spawn)
        self._handed_off: set[str] = set()  # tokens of calls whose caller stays with a person
        self.dialplan = DialplanCalls(self)  # calls from the site's own AudioSocket() line (no Stasis)

    def reconfigure(self, config: AppConfig) -> None:
        """A reloaded config, for the calls that come in from now on (each call keeps its own)."""
        self.config = config
        self.services = dataclasses.replace(self.services, config=config)

    @property
    def task_errors(self) -> int:
        """Tasks that failed: of call control (rejects, orphan clean-up, teardowns) and of calls."""
        return self._tasks.errors + self._ended_call_task_errors + sum(c.task_errors for c in self.calls.values())

    def model_calls(self) -> int:
        """Calls up on providers whose stages run on this machine's models."""
        providers = self.config.providers
        return sum(1 for c in self.calls.values() if c.session.provider is not None and providers.runs_models_here(c.session.provider.name))

    def models_full(self, provider: str) -> Capacity | None:
        """The models' capacity, if a new call on ``provider`` would go beyond it."""
        if not self.config.providers.runs_models_here(provider):
            return None
        capacity = self._model_capacity()
        return capacity if capacity.calls is not None and self.model_calls() >= capacity.calls else None

    def call_for_channel(self, channel_id: str) -> Call | None:
        c = self.calls.get(channel_id)
        if c is not None:
            return c
        for c in self.calls.values():
            if c.session.external_channel_id == channel_id:
                return c
        return None

    # ---- ARI events (called synchronously by the event stream)
    def on_event(self, event: AriEvent) -> None:
        if self.desk.on_event(event):
            return  # a person's channel, a snoop, or a caller now with a person
        if isinstance(event, StasisStart):
            self._on_stasis_start(event)
        elif isinstance(event, (StasisEnd, ChannelHangupRequest, ChannelDestroyed)):
            if event.channel.id in self.transferred and not isinstance(event, StasisEnd):
                self._transfer_ended(event)
                return
            c = self.call_for_channel(event.channel.id)
            if c is not None and not c.ending:
                is_caller = event.channel.id == c.session.caller_channel_id
                transfer = c.actions.transfer_left() if is_caller else None
                if transfer is not None:
                    self.transfer_caller(c, transfer)
                    return
                reason = "caller hung up" if is_caller else "ExternalMedia channel ended"
                self.begin_teardown(c, reason, hangup_caller=not is_caller)
        elif isinstance(event, ChannelDialplan):
            if (t := self.transferred.get(event.channel.id)) is not None:
                at = f"{event.channel.dialplan.exten}@{event.channel.dialplan.context}"
                # A step ran at the target: it exists. (The first event shows the target's place with
                # the Stasis() step just left: measured, also for an extension that does not exist.)
                t.reached = t.reached or (at == t.rec.target and event.dialplan_app.lower() != "stasis")
                self.store.log(event.channel.id, logging.INFO, f"transferred caller runs {event.dialplan_app}({event.dialplan_app_data}) at {at}")
        elif isinstance(event, (PlaybackStarted, PlaybackFinished)):
            # Our playback ids are "<call token>-<n>": the token finds the call.
            c = self.by_token.get(event.playback.id.rsplit("-", 1)[0])
            if c is not None:
                c.playback_event(event.playback.id, isinstance(event, PlaybackStarted), event.playback.state)
        elif isinstance(event, ChannelDtmfReceived):
            c = self.calls.get(event.channel.id)
            if c is not None and not self.dialplan.owns(c):  # a dialplan call's keys come on its socket
                self.on_dtmf(c, event.digit)
        elif isinstance(event, CallBroadcast):
            self._on_broadcast(event.channel.id)
        elif isinstance(event, ApplicationReplaced):
            self.replaced = True
            self.store.log(
                None,
                logging.ERROR,
                f"another ARI client connected as app {self.app!r} and now receives its calls; "
                "give each engine its own app name (ARI_APP)",
            )

    def _on_broadcast(self, channel_id: str) -> None:
        """A call offered to every engine: claimed only with room for it and a provider ready to
        answer, so that a full or broken engine leaves it to the others. The busier this engine,
        the later it claims, so that the least loaded one tends to win."""
        if self.closing or self.replaced or channel_id in self.calls or channel_id in self._claiming:
            return
        if len(self.calls) >= self.config.rtp.max_calls or not self._ready_for_calls():
            return
        if len(self.calls) + len(self._claiming) >= self.config.rtp.max_calls:
            # Full only if every claim in flight is won: with several engines racing for a burst of
            # calls some are lost, and then nobody would claim this one (seen on Asterisk 22).
            self._passed_over[channel_id] = self.services.clock.now()
            return
        if self.models_full(self.provider_for_new_call("")) is not None:
            return
        self._claiming.add(channel_id)
        self.spawn(self._claim(channel_id, CLAIM_SPREAD_S * len(self.calls) / self.config.rtp.max_calls))

    async def _claim(self, channel_id: str, delay_s: float) -> None:
        won = False
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            won = await self.ari.claim(channel_id, self.app)
            log.info("broadcast call %s: %s", channel_id, "claimed" if won else "taken by another engine")
        except (AriError, AriUnavailable) as e:
            log.warning("broadcast call %s: claim failed: %s", channel_id, e)
        finally:
            self._claiming.discard(channel_id)
        if not won:
            self._offer_again()

    def _offer_again(self) -> None:
        """A claim was lost: the room it held goes to an offer passed over for it, if still recent."""
        now = self.services.clock.now()
        offers, self._passed_over = self._passed_over, {}
        for cid, when in offers.items():
            if now - when < OFFER_KEEP_S:
                self._on_broadcast(cid)

    def _on_stasis_start(self, event: StasisStart) -> None:
        ch = event.channel
        fut = self._pending_external.get(ch.id)
        if fut is not None:
            if not fut.done():
                fut.set_result(ch)
            return
        if ch.id.startswith(self.ext_prefix):
            # Our naming, but no call waits for it: its call was torn down while it was created.
            self.spawn(self._delete_channel(ch.id, "orphan ExternalMedia channel"))
            return
        if ch.id in self.calls:
            return
        profile = self.config.profile_for(event.args, ch.dialplan.exten)
        if self.closing:
            self._reject(ch, event.args, profile, Reason.SHUTDOWN, "the engine is shutting down")
            return
        if len(self.calls) >= self.config.rtp.max_calls:
            self.store.calls_rejected_over_capacity += 1
            self._reject(ch, event.args, profile, Reason.MAX_CALLS, f"over max_calls ({self.config.rtp.max_calls} calls at once)")
            return
        provider = self.provider_for_new_call(self.config.profiles[profile].provider)
        full = self.models_full(provider)
        if full is not None:
            # The models serve no more at once: this caller would wait in silence, and make every
            # other caller wait longer. Turned away now, as at max_calls.
            self.overload.call_refused()
            self._reject(ch, event.args, profile, Reason.MODELS, f"the models are at capacity ({full.calls} calls at once; {full.basis})")
            return
        session = CallSession(
            call_id=ch.id,
            caller_channel_id=ch.id,
            caller_channel_name=ch.name,
            caller_number=ch.caller.number,
            caller_name=ch.caller.name,
            stasis_args=tuple(event.args),
            dialled=ch.dialplan.exten,
            profile=profile,
            provider=ProviderSession(provider),
            transport=self._transport_for(event.args, profile, ch.id),
        )
        call = Call(self.services, session, uuid.uuid4().hex[:12], self.end_failed)
        call.actions.desk = self.desk
        call.actions.hand_off = lambda conn, why, c=call: self._hand_off(c, conn, why)
        self.calls[ch.id] = call
        self.by_token[call.token] = call
        self.store.add(session)
        self.store.log(ch.id, logging.INFO, f"call from {ch.caller.number or 'unknown'} ({ch.name}) to {ch.dialplan.exten or '?'}, profile {profile}, provider {provider}")
        call.setup_task = call.spawn(self._setup(call))

    def _transport_for(self, args: list[str], profile: str, channel_id: str) -> str:
        """The call's transport (AppConfig.transport_for); one this engine does not run (its
        server not started: no profile names it and it is not the default) gives the default."""
        name = self.config.transport_for(args, profile)
        t = self.transports.by_name.get(name)
        if t is None or not t.running:
            default = self.config.media.transport
            _rl.warning(f"transport {name}", f"[{channel_id}] transport {name} asked for but not running here (no profile names it): using {default}")
            return default
        return name

    # ---- actions that take the caller away
    def on_dtmf(self, c: Call, digit: str) -> None:
        dept = c.profile.department_for_digit(digit)
        self.store.log(c.call_id, logging.INFO, f"DTMF {digit}" + (f": transfer to {dept}" if dept else " (no department has this key)"))
        if dept is not None:
            c.actions.request(ActionRequest("transfer", dept, f"caller pressed {digit}"), by="keypad")

    def transfer_caller(self, c: Call, rec: ActionRecord) -> None:
        """The caller left Stasis into the transfer's target: release what served the call, never
        the caller (a DELETE now would hang up the transferred call)."""
        cid = c.session.caller_channel_id
        if c.profile.departments[rec.department].endpoint:
            rec.state = "done"  # the channel driver took it (redirect): nothing more to see here
            report_action(self.store, self.action_counters, c.call_id, rec, logging.INFO)
        else:
            self.transferred[cid] = _Transferred(c.session, rec, self.services.clock.now())
            self.services.clock.call_later(TRANSFER_CHECK_S, self._transfer_settled, cid)
        self.begin_teardown(c, f"transferred to {rec.department} ({rec.target})", hangup_caller=False)

    def _transfer_settled(self, channel_id: str, gone: bool = False) -> None:
        entry = self.transferred.pop(channel_id, None)
        if entry is None:
            return
        session, rec = entry.session, entry.rec
        rec.state = "done"
        report_action(self.store, self.action_counters, session.call_id, rec, logging.INFO)
        if session.end_reason is not None:  # else the call's end, still to come, writes it
            self.store.amend(session)
        if not self.closing and not gone:
            self.spawn(self._ari_cleanup(self.ari.unsubscribe(self.app, f"channel:{channel_id}"), f"subscription to {channel_id}"))

    def _transfer_ended(self, event: ChannelHangupRequest | ChannelDestroyed) -> None:
        """A transferred caller hung up within TRANSFER_CHECK_S: the transfer failed unless the
        caller had reached the target (Asterisk reports each dialplan step to the subscribed app;
        a target the dialplan lacks runs none: the PBX hangs the caller up, "sent to invalid
        extension")."""
        t = self.transferred.pop(event.channel.id)
        if t.reached:
            self.transferred[event.channel.id] = t
            self._transfer_settled(event.channel.id, gone=True)  # put through; the call there was short
            return
        rec = t.rec
        after_ms = (self.services.clock.now() - t.at) * 1000
        cause = f" (cause {event.cause})" if event.cause else ""
        rec.state = "failed"
        rec.detail = f"Asterisk hung the caller up {after_ms:.0f} ms after the transfer{cause}, before any step at {rec.target}: the dialplan has no such extension"
        report_action(self.store, self.action_counters, t.session.call_id, rec, logging.ERROR)
        if t.session.end_reason is not None:  # else the call's end, still to come, writes it
            self.store.amend(t.session)

    def _hand_off(self, c: Call, conn: Connection, reason: str) -> None:
        """A person was brought in: the agent's part ends (its media, provider and ExternalMedia
        channel go), the caller and the person stay in the call's bridge until either hangs up."""
        self._handed_off.add(c.token)
        self.desk.connect(conn)
        self.begin_teardown(c, reason, hangup_caller=False)

    def end_failed(self, call: Call, reason: str) -> None:
        self.begin_teardown(call, reason, hangup_caller=True)

    def _reject(self, ch: Channel, args: list[str], profile: str, reason: Reason, why: str) -> None:
        """Turns the caller away (asterisk.over_capacity: busy, or back to the dialplan): never a
        call of this engine, but kept in the history and counted (engine/refusals.py)."""
        mode = self.config.asterisk.over_capacity
        self.refusals.refused(ch, args, profile, reason, why, "sent back to the dialplan" if mode == "dialplan" else "hung up busy")
        self.spawn(self._turn_away(ch.id, mode))

    async def _turn_away(self, channel_id: str, mode: str) -> None:
        try:
            if mode == "dialplan":
                await self.ari.continue_in_dialplan(channel_id)
            else:
                await self.ari.hangup(channel_id, reason="busy")
        except (AriError, AriUnavailable) as e:
            _rl.warning("turn away", f"turning away caller {channel_id} failed: {e}")

    # ---- setup
    async def _setup(self, h: Call) -> None:
        s = h.session
        ari = self.ari
        try:
            await ari.answer(s.caller_channel_id)
            # Known before it exists, so that teardown deletes it whatever the create answered.
            bridge_id = s.bridge_id = f"{self.bridge_prefix}{h.token}"
            await ari.create_bridge(bridge_id, name=f"aiagent call {h.token}")
            await ari.add_channel(bridge_id, s.caller_channel_id)

            ext_id = f"{self.ext_prefix}{h.token}"
            # The StasisStart of the new channel can beat the HTTP response: listen first.
            ready = asyncio.get_running_loop().create_future()
            self._pending_external[ext_id] = ready
            try:
                ext, link = await self.transports[s.transport].open(ari, ext_id, self.app, h.token)
                s.external_channel_id = ext.id
                await h.start_media(link)
                # 422 "Channel not in Stasis application" if added before its StasisStart.
                await asyncio.wait_for(ready, EXTERNAL_MEDIA_READY_TIMEOUT_S)
            finally:
                self._pending_external.pop(ext_id, None)
            await ari.add_channel(bridge_id, ext_id)
            self.store.set_state(s, CallState.STREAMING)
            h.bridged()
            self.store.log(s.call_id, logging.INFO, f"bridged with {s.transport} media; Asterisk at {s.media_remote}")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.setup_failed(h, "ExternalMedia channel never entered Stasis")
        except (ExternalMediaLost, MediaSetupError) as e:
            self.setup_failed(h, str(e))
        except (AriError, AriUnavailable, ProviderUnavailable) as e:
            self.setup_failed(h, str(e))
        except Exception as e:  # a provider that fails to start, a bad address: this call only
            log.exception("call %s setup failed", s.call_id)
            self.setup_failed(h, f"{e.__class__.__name__}: {e}")

    def setup_failed(self, h: Call, why: str) -> None:
        self.store.calls_failed += 1
        self.store.log(h.session.call_id, logging.ERROR, f"call setup failed: {why}")
        self.begin_teardown(h, f"setup failed: {why}", hangup_caller=True)

    # ---- teardown
    def begin_teardown(self, h: Call, reason: str, hangup_caller: bool) -> asyncio.Task[None]:
        if h.teardown_task is None:
            # Not one of h.tasks: teardown cancels those and must not cancel itself.
            h.teardown_task = self.spawn(self._teardown(h, reason, hangup_caller))
        return h.teardown_task

    async def _teardown(self, h: Call, reason: str, hangup_caller: bool) -> None:
        """Releases everything the call holds. Each step runs whatever the one before did, the
        whole is bounded in time, and the call always leaves the store (freeing its slot)."""
        s = h.session
        self.store.set_state(s, CallState.CLEANUP)
        try:
            await asyncio.wait_for(self._release(h, hangup_caller), TEARDOWN_TIMEOUT_S)
        except TimeoutError:
            log.error("[%s] teardown took over %.0f s; leftovers go at the next reconcile", s.call_id, TEARDOWN_TIMEOUT_S)
        finally:
            if h.media is not None:
                h.media.link.close()
            if self.calls.pop(s.call_id, None) is not None:
                self._ended_call_task_errors += h.task_errors
            self.by_token.pop(h.token, None)
            self.dialplan.ended(h)
            self.store.remove(s, reason)
            self.store.log(s.call_id, logging.INFO, f"call ended: {reason}")

    async def _release(self, h: Call, hangup_caller: bool) -> None:
        s = h.session
        with _step(s.call_id, "releasing the call's media and provider"):
            await h.release()
        dialplan = self.dialplan.owns(h)  # no media channel, no bridge; the caller's dialplan goes on
        # The ExternalMedia channel id is known before it exists: delete it even if setup was
        # cut off mid-request (a 404 then just means it was never made).
        if h.media is not None:
            h.media.link.hangup()
        if not dialplan:
            await self._delete_channel(f"{self.ext_prefix}{h.token}", "ExternalMedia")
        if h.media is not None:
            h.media.link.close()
        if dialplan:
            await self.dialplan.released(h)
        handed_off = h.token in self._handed_off
        self._handed_off.discard(h.token)
        if s.bridge_id is not None and not handed_off:  # else the caller and the person talk in it
            await self._ari_cleanup(self.ari.destroy_bridge(s.bridge_id), f"bridge {s.bridge_id}")
        for t in self.desk.call_ended(h.token):  # a snoop ends with the call
            await t
        if hangup_caller and not dialplan:  # AudioSocket's hangup message ended a dialplan call's part
            await self._delete_channel(s.caller_channel_id, "caller")
        with _step(s.call_id, "deleting files"):
            h.delete_files()

    async def _delete_channel(self, channel_id: str, what: str) -> None:
        await self._ari_cleanup(self.ari.hangup(channel_id), f"{what} channel {channel_id}")

    async def _ari_cleanup(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        try:
            await coro
        except AriError as e:
            if e.status != 404:  # already gone is what we wanted
                log.warning("cleanup of %s failed: %s", what, e)
        except AriUnavailable as e:
            # Asterisk unreachable: the reconcile after reconnect deletes what is left.
            log.warning("cleanup of %s deferred, ARI unreachable: %s", what, e)
        except Exception as e:  # whatever it was, the next clean-up step still runs
            log.error("cleanup of %s failed: %s", what, e, exc_info=e)

    async def shutdown(self) -> None:
        self.closing = True
        tasks = [self.begin_teardown(h, "engine shutdown", hangup_caller=True) for h in list(self.calls.values())]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.desk.shutdown()  # callers left with a person are hung up as every call is
        await self._tasks.cancel()
        self.refusals.flush()

    # ---- reconcile after (re)connect
    async def reconcile(self, reconnect: bool) -> None:
        """Compare what Asterisk still has with what the engine holds: carry on with calls that are
        fully there, end the ones that lost a part, delete leftovers of ours nobody owns."""
        channels = {c.id: c for c in await self.ari.list_channels()}
        bridges = {b.id for b in await self.ari.list_bridges()}
        for h in list(self.calls.values()):
            s = h.session
            if h.teardown_task is not None or s.state is CallState.CONNECTING:
                continue  # setup in progress reports its own failures
            if self.dialplan.owns(h):
                self.dialplan.reconcile(h, channels, reconnect)
            elif s.caller_channel_id not in channels:
                self.begin_teardown(h, "caller left while ARI was disconnected", hangup_caller=False)
            elif s.external_channel_id not in channels or s.bridge_id not in bridges:
                self.begin_teardown(h, "media path lost while ARI was disconnected", hangup_caller=True)
            elif reconnect:
                self.store.log(s.call_id, logging.INFO, "call carried on across ARI reconnect")
        self._recover_pending_external(channels)
        owned_ext = {f"{self.ext_prefix}{h.token}" for h in self.calls.values()}
        owned_bridges = {f"{self.bridge_prefix}{h.token}" for h in self.calls.values()} | self.desk.owned_bridges()
        with_people = self.desk.owned_channels()
        for conn in list(self.desk.connections):
            if any(cid not in channels for cid in [*conn.channels, *([conn.caller_id] if conn.caller_id else [])]):
                self.desk.end(conn, "a side left while ARI was disconnected")
        orphans: list[str] = []
        for cid, ch in channels.items():
            if cid in with_people or cid.split(";")[0] in with_people:
                continue
            if cid.startswith((self.desk.helper_prefix, self.desk.snoop_prefix)):
                self.spawn(self._delete_channel(cid, "leftover brought-in person's"))
            elif cid.startswith(self.ext_prefix):
                # A Local media channel's other half (AudioSocket's dialplan form) is "ID;2".
                if cid.split(";")[0] not in owned_ext and cid.split(";")[0] not in self._pending_external:
                    self.spawn(self._delete_channel(cid, "leftover ExternalMedia"))
            elif ch.in_stasis_app(self.app) and cid not in self.calls:
                orphans.append(cid)
        for bid in bridges:
            if bid.startswith(self.bridge_prefix) and bid not in owned_bridges:
                self.spawn(self._ari_cleanup(self.ari.destroy_bridge(bid), f"leftover bridge {bid}"))
        if orphans:
            self.spawn(self._adopt_orphans(orphans))

    def _recover_pending_external(self, channels: dict[str, Channel]) -> None:
        """Calls in setup whose ExternalMedia StasisStart may have been lost while the socket was
        down: the channel exists, so it entered Stasis (a 422 at addChannel says otherwise, and
        ends the call with that reason); a channel that was created and is gone ends its call."""
        for ext_id, fut in self._pending_external.items():
            if fut.done():
                continue
            ch = channels.get(ext_id)
            if ch is not None:
                log.info("ExternalMedia %s is there after the reconnect: its StasisStart was missed; setup goes on", ext_id)
                fut.set_result(ch)
                continue
            h = self.by_token.get(ext_id[len(self.ext_prefix):])
            if h is not None and h.session.external_channel_id == ext_id:
                fut.set_exception(ExternalMediaLost("ExternalMedia channel was gone after the ARI reconnect"))

    async def _adopt_orphans(self, candidates: list[str]) -> None:
        """Callers in our Stasis app that no call owns: their StasisStart was lost in a socket gap,
        or an earlier engine process served them. Each gets a call as if it had just arrived."""
        await asyncio.sleep(ORPHAN_GRACE_S)  # a StasisStart may still be on its way
        for cid in candidates:
            if cid in self.calls:
                continue
            try:
                ch = await self.ari.get_channel(cid)
            except (AriError, AriUnavailable):
                continue  # gone meanwhile
            if cid in self.calls:
                continue
            args = [a.strip() for a in ch.dialplan.app_data.split(",")[1:] if a.strip()]
            self.store.log(cid, logging.WARNING, "caller in our Stasis app with no call behind it (lost StasisStart or engine restart): taking the call")
            self._on_stasis_start(StasisStart(type="StasisStart", channel=ch, args=args))
