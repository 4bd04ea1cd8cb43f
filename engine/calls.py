"""Call control over ARI: set up each caller's bridge and ExternalMedia channel, tear it all down.

One CallHandle per call owns everything the call holds (tasks, media route, provider session) so
that one call's failure or hangup never touches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Iterator

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.ari.models import (
    ApplicationReplaced,
    AriEvent,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    PlaybackFinished,
    PlaybackStarted,
    StasisEnd,
    StasisStart,
)
from media.audio import ulaw_to_pcm16
from engine.config import AppConfig
from engine.conversation import ConversationCoordinator, ConversationCounters
from engine.media import CallMedia
from engine.playback import FilePlayback, PlaybackCounters, StreamPlayback
from engine.rtp_server import RtpServer
from engine.sessions import CallSession, CallState, ProviderSession, SessionStore, TranscriptTurn
from providers.base import (
    AgentAudio,
    AgentSpeakingStarted,
    AgentSpeakingStopped,
    CallContext,
    CallerInterrupted,
    Provider,
    ProviderCall,
    ProviderError,
    ProviderEvent,
    Transcript,
    TurnMark,
)

log = logging.getLogger(__name__)

EXTERNAL_MEDIA_READY_TIMEOUT_S = 5.0
PROVIDER_STOP_TIMEOUT_S = 5.0
ORPHAN_GRACE_S = 1.0
# ARI requests have their own timeout (asterisk.request_timeout_s); this bounds a teardown whose
# every step is slow, so that a call never holds its max_calls slot for long.
TEARDOWN_TIMEOUT_S = 20.0
TRANSCRIPT_VARIABLE = "AIAGENT_TRANSCRIPT"  # the dialplan/CDR can read what the caller said

ProviderLookup = Callable[[str], Awaitable[Provider]]


class ExternalMediaLost(Exception):
    pass

@dataclass(eq=False)
class CallHandle:
    session: CallSession
    token: str  # names the call's bridge, ExternalMedia channel and files; never caller text
    media: CallMedia | None = None
    provider_call: ProviderCall | None = None
    conversation: ConversationCoordinator | None = None
    setup_task: asyncio.Task | None = None
    teardown_task: asyncio.Task | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            # The call owns its tasks: a failed one is its error, logged with the traceback.
            self.session.task_errors += 1
            log.error("[%s] call task %s failed: %s", self.session.call_id, task.get_name(), e, exc_info=e)


def _drop_audio(pcm: bytes) -> None:
    pass


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
        config: AppConfig,
        ari: AriClient,
        store: SessionStore,
        rtp: RtpServer,
        provider_for_new_call: Callable[[], str],
        get_provider: ProviderLookup,
        observe_turn_latency: Callable[[float], None] = lambda s: None,
    ) -> None:
        self.config = config
        self.app = config.asterisk.app
        self.ari = ari
        self.store = store
        self.rtp = rtp
        self._provider_for_new_call = provider_for_new_call
        self._get_provider = get_provider
        self._observe_turn_latency = observe_turn_latency
        self.handles: dict[str, CallHandle] = {}
        self._by_token: dict[str, CallHandle] = {}
        self.playback_counters = PlaybackCounters()
        self.conversation_counters = ConversationCounters()
        self._pending_external: dict[str, asyncio.Future[Channel]] = {}
        self._tasks: set[asyncio.Task] = set()  # work that belongs to no call (rejects, orphans)
        self.ext_prefix = f"{self.app}-em-"
        self.bridge_prefix = f"{self.app}-br-"
        self.replaced = False
        self.closing = False
        self.task_errors = 0  # tasks of no call that failed (rejects, orphan clean-up, teardowns)

    # ---- helpers
    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            self.task_errors += 1
            log.error("call control task %s failed: %s", task.get_name(), e, exc_info=e)

    def handle_for_channel(self, channel_id: str) -> CallHandle | None:
        h = self.handles.get(channel_id)
        if h is not None:
            return h
        for h in self.handles.values():
            if h.session.external_channel_id == channel_id:
                return h
        return None

    @property
    def external_host(self) -> str:
        rtp = self.config.rtp
        return f"{rtp.advertise_host or rtp.host}:{self.rtp.port}"

    # ---- ARI events (called synchronously by the event stream)
    def on_event(self, event: AriEvent) -> None:
        if isinstance(event, StasisStart):
            self._on_stasis_start(event)
        elif isinstance(event, (StasisEnd, ChannelHangupRequest, ChannelDestroyed)):
            h = self.handle_for_channel(event.channel.id)
            if h is not None and h.teardown_task is None:
                is_caller = event.channel.id == h.session.caller_channel_id
                reason = "caller hung up" if is_caller else "ExternalMedia channel ended"
                self.begin_teardown(h, reason, hangup_caller=not is_caller)
        elif isinstance(event, (PlaybackStarted, PlaybackFinished)):
            # Our playback ids are "<call token>-<n>": the token finds the call.
            h = self._by_token.get(event.playback.id.rsplit("-", 1)[0])
            if h is None or h.conversation is None or not isinstance(h.conversation.downstream, FilePlayback):
                return
            if isinstance(event, PlaybackStarted):
                h.conversation.downstream.on_started(event.playback.id)
            else:
                h.conversation.downstream.on_finished(event.playback.id, event.playback.state)
        elif isinstance(event, ChannelDtmfReceived):
            h = self.handles.get(event.channel.id)
            if h is not None:
                self.store.log(h.session.call_id, logging.INFO, f"DTMF {event.digit}")
        elif isinstance(event, ApplicationReplaced):
            self.replaced = True
            self.store.log(
                None,
                logging.ERROR,
                f"another ARI client connected as app {self.app!r} and now receives its calls; "
                "give each engine its own app name (ARI_APP)",
            )

    def _on_stasis_start(self, event: StasisStart) -> None:
        ch = event.channel
        fut = self._pending_external.get(ch.id)
        if fut is not None:
            if not fut.done():
                fut.set_result(ch)
            return
        if ch.id.startswith(self.ext_prefix):
            # Our naming, but no call waits for it: its call was torn down while it was created.
            self._spawn(self._delete_channel(ch.id, "orphan ExternalMedia channel"))
            return
        if ch.id in self.handles:
            return
        if self.closing:
            self._spawn(self._reject(ch, "engine shutting down"))
            return
        if len(self.handles) >= self.config.rtp.max_calls:
            self.store.calls_rejected_over_capacity += 1
            self._spawn(self._reject(ch, f"over capacity ({self.config.rtp.max_calls} calls)"))
            return
        provider = self._provider_for_new_call()
        session = CallSession(
            call_id=ch.id,
            caller_channel_id=ch.id,
            caller_number=ch.caller.number,
            caller_name=ch.caller.name,
            stasis_args=tuple(event.args),
            provider=ProviderSession(provider),
        )
        h = CallHandle(session, uuid.uuid4().hex[:12])
        self.handles[ch.id] = h
        self._by_token[h.token] = h
        self.store.add(session)
        self.store.log(ch.id, logging.INFO, f"call from {ch.caller.number or 'unknown'} ({ch.name}), provider {provider}")
        h.setup_task = h.spawn(self._setup(h))

    async def _reject(self, ch: Channel, why: str) -> None:
        mode = self.config.asterisk.over_capacity
        self.store.log(ch.id, logging.WARNING, f"call from {ch.caller.number or 'unknown'} not taken: {why}; {mode}")
        try:
            if mode == "dialplan":
                await self.ari.continue_in_dialplan(ch.id)
            else:
                await self.ari.hangup(ch.id, reason="busy")
        except (AriError, AriUnavailable) as e:
            log.warning("rejecting %s failed: %s", ch.id, e)

    # ---- setup
    async def _setup(self, h: CallHandle) -> None:
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
                ext = await ari.external_media(ext_id, self.app, self.external_host, self.config.rtp.format)
                s.external_channel_id = ext.id
                s.rtp_remote = await self._unicast_address(ext)
                await self._start_media(h)
                # 422 "Channel not in Stasis application" if added before its StasisStart.
                await asyncio.wait_for(ready, EXTERNAL_MEDIA_READY_TIMEOUT_S)
            finally:
                self._pending_external.pop(ext_id, None)
            await ari.add_channel(bridge_id, ext_id)
            self.store.set_state(s, CallState.STREAMING)
            s.bridged_at = asyncio.get_running_loop().time()
            self.store.log(s.call_id, logging.INFO, f"bridged with ExternalMedia; Asterisk RTP at {s.rtp_remote[0]}:{s.rtp_remote[1]}")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self._setup_failed(h, "ExternalMedia channel never entered Stasis")
        except ExternalMediaLost as e:
            self._setup_failed(h, str(e))
        except (AriError, AriUnavailable) as e:
            self._setup_failed(h, str(e))
        except Exception as e:  # a provider that fails to start, a bad address: this call only
            log.exception("call %s setup failed", s.call_id)
            self._setup_failed(h, f"{e.__class__.__name__}: {e}")

    def _setup_failed(self, h: CallHandle, why: str) -> None:
        self.store.calls_failed += 1
        self.store.log(h.session.call_id, logging.ERROR, f"call setup failed: {why}")
        self.begin_teardown(h, f"setup failed: {why}", hangup_caller=True)

    async def _unicast_address(self, ext: Channel) -> tuple[str, int]:
        vars_ = ext.channelvars or {}
        addr = vars_.get("UNICASTRTP_LOCAL_ADDRESS")
        port = vars_.get("UNICASTRTP_LOCAL_PORT")
        if not addr or not port:
            addr = await self.ari.get_variable(ext.id, "UNICASTRTP_LOCAL_ADDRESS")
            port = await self.ari.get_variable(ext.id, "UNICASTRTP_LOCAL_PORT")
        return str(addr), int(port)

    async def _open_provider_call(self, h: CallHandle, name: str) -> tuple[Provider, ProviderCall]:
        s = h.session
        provider = await self._get_provider(name)
        ready = provider.readiness()
        if not ready.ready:
            raise RuntimeError(f"provider {name} is not ready: {ready.detail}")
        vad = self.config.vad
        ctx = CallContext(
            call_id=s.call_id,
            caller_number=s.caller_number,
            caller_name=s.caller_name,
            preroll_ms=vad.preroll_ms,
            fallback_window_ms=vad.fallback_interval_ms,
        )
        pcall = provider.open_call(ctx, lambda ev: self._on_provider_event(h, pcall, ev))
        return provider, pcall

    async def switch_provider(self, h: CallHandle, name: str, why: str) -> None:
        """Moves a live call to another provider: the new one takes over at once if the call is
        listening, else at its next turn; the old one is stopped when it is replaced."""
        conv = h.conversation
        if conv is None or h.teardown_task is not None:
            return
        provider, pcall = await self._open_provider_call(h, name)
        await pcall.start()
        old = h.provider_call
        h.provider_call = pcall
        h.session.provider = ProviderSession(name, started_at=asyncio.get_running_loop().time(), ready=True)
        conv.replace_provider(pcall, provider.half_duplex, provider.continuous_input)
        self.store.log(h.session.call_id, logging.WARNING if "fail" in why else logging.INFO, f"provider now {name}: {why}")
        if old is not None:
            h.spawn(old.stop())

    async def _start_media(self, h: CallHandle) -> None:
        s = h.session
        assert s.rtp_remote is not None and s.provider is not None
        provider, pcall = await self._open_provider_call(h, s.provider.name)
        h.provider_call = pcall
        conv = ConversationCoordinator(
            self.config, s, self.store, pcall, provider.half_duplex, provider.continuous_input,
            self.conversation_counters, self._observe_turn_latency, h.spawn,
        )
        h.conversation = conv
        frames = self.config.playback.stream_queue_max_ms // 20
        h.media = CallMedia(s, s.rtp_remote, conv.on_caller_pcm8, max_queue_frames=frames)
        if self.config.playback.downstream_mode == "stream":
            self._use_stream(h)
        else:
            self._use_files(h)
        await pcall.start()
        s.provider.ready = True
        s.provider.started_at = asyncio.get_running_loop().time()
        self.rtp.register(h.media)

    def _use_files(self, h: CallHandle) -> None:
        conv = h.conversation
        assert conv is not None
        h.session.downstream_mode = "file"
        conv.downstream = FilePlayback(
            self.ari, h.session, h.token, self.config.storage.media_dir, self.config.playback, self.playback_counters,
            h.spawn, conv.tokens_changed, conv.first_audio_out, conv.reference,
        )

    def _use_stream(self, h: CallHandle) -> None:
        conv, media = h.conversation, h.media
        assert conv is not None and media is not None
        h.session.downstream_mode = "stream"
        stream = StreamPlayback(self.rtp, media, conv.tokens_changed)
        conv.downstream = stream
        media.on_stream_start = conv.first_audio_out
        media.on_drained = stream.drained
        media.on_send_failed = lambda: self._stream_failed(h)

    def _stream_failed(self, h: CallHandle) -> None:
        """RTP to Asterisk keeps failing for this call: play its audio as files instead."""
        media, conv = h.media, h.conversation
        if media is None or conv is None or h.session.downstream_mode != "stream":
            return
        queued = b"".join(media.out_frames)
        if conv.downstream is not None:
            conv.downstream.close()
        media.on_stream_start = media.on_drained = media.on_send_failed = None
        self._use_files(h)
        self.playback_counters.stream_fallbacks += 1
        self.store.log(h.session.call_id, logging.WARNING, "stream playback failed (RTP send errors): falling back to file playback for this call")
        files = conv.downstream
        if queued and files is not None:
            files.add(ulaw_to_pcm16(queued), 8000)
            files.finish()

    # ---- provider events
    def _on_provider_event(self, h: CallHandle, source: ProviderCall, ev: ProviderEvent) -> None:
        if h.teardown_task is not None or source is not h.provider_call:
            return  # a provider call that was replaced has nothing more to say
        s = h.session
        conv = h.conversation
        if isinstance(ev, AgentAudio):
            if conv is not None:
                conv.agent_audio(ev.pcm16, ev.sample_rate)
        elif isinstance(ev, Transcript):
            turn = TranscriptTurn(ev.role, ev.text, ev.final, asyncio.get_running_loop().time())
            self.store.add_transcript(s, turn)
            if ev.role == "caller" and ev.final:
                text = " ".join(t.text for t in s.transcript if t.role == "caller")
                h.spawn(self._set_transcript_var(s.caller_channel_id, text))
        elif isinstance(ev, AgentSpeakingStopped):
            if conv is not None:
                conv.agent_finished()
        elif isinstance(ev, AgentSpeakingStarted):
            if conv is not None:
                conv.agent_started()
        elif isinstance(ev, TurnMark):
            if conv is not None:
                conv.mark(ev.stage, ev.at)
        elif isinstance(ev, CallerInterrupted):
            if conv is not None and conv.agent_is_speaking:
                conv.barge_in(forced=False)
        elif isinstance(ev, ProviderError):
            assert s.provider is not None
            s.provider.errors += 1
            s.provider.last_error = ev.message
            self.store.log(s.call_id, logging.ERROR, f"provider {s.provider.name}: {ev.message}")
            if ev.fatal:
                fallback = self.config.providers.fallback
                if fallback and fallback != s.provider.name:
                    h.spawn(self._fall_back(h, fallback, ev.message))
                else:
                    self.begin_teardown(h, f"provider error: {ev.message}", hangup_caller=True)

    async def _fall_back(self, h: CallHandle, name: str, why: str) -> None:
        try:
            await self.switch_provider(h, name, f"{h.session.provider.name if h.session.provider else '?'} failed ({why})")
        except Exception as e:
            self.store.log(h.session.call_id, logging.ERROR, f"fallback provider {name} failed too: {e}")
            self.begin_teardown(h, f"provider error: {why}", hangup_caller=True)

    async def _set_transcript_var(self, channel_id: str, text: str) -> None:
        try:
            await self.ari.set_variable(channel_id, TRANSCRIPT_VARIABLE, text[-1000:])
        except (AriError, AriUnavailable) as e:
            log.debug("could not set %s on %s: %s", TRANSCRIPT_VARIABLE, channel_id, e)

    # ---- teardown
    def begin_teardown(self, h: CallHandle, reason: str, hangup_caller: bool) -> asyncio.Task:
        if h.teardown_task is None:
            # Not one of h.tasks: teardown cancels those and must not cancel itself.
            h.teardown_task = self._spawn(self._teardown(h, reason, hangup_caller))
        return h.teardown_task

    async def _teardown(self, h: CallHandle, reason: str, hangup_caller: bool) -> None:
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
                self.rtp.unregister(h.media)
            self.handles.pop(s.call_id, None)
            self._by_token.pop(h.token, None)
            self.store.remove(s, reason)
            self.store.log(s.call_id, logging.INFO, f"call ended: {reason}")

    async def _release(self, h: CallHandle, hangup_caller: bool) -> None:
        s = h.session
        current = asyncio.current_task()
        pending = [t for t in h.tasks if t is not current]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        with _step(s.call_id, "stopping media"):
            if h.media is not None:
                # Keep the route until the ExternalMedia channel is gone, so that packets still in
                # flight are recognised (and dropped here) rather than counted as foreign.
                h.media.sink = _drop_audio
                self.rtp.pacer.discard(h.media)
            if h.conversation is not None:
                h.conversation.close()
        if h.provider_call is not None:
            with _step(s.call_id, "provider stop"):
                try:
                    await asyncio.wait_for(h.provider_call.stop(), PROVIDER_STOP_TIMEOUT_S)
                except TimeoutError:
                    log.warning("[%s] provider stop took over %.0f s", s.call_id, PROVIDER_STOP_TIMEOUT_S)
        # The ExternalMedia channel id is known before it exists: delete it even if setup was
        # cut off mid-request (a 404 then just means it was never made).
        await self._delete_channel(f"{self.ext_prefix}{h.token}", "ExternalMedia")
        if h.media is not None:
            self.rtp.unregister(h.media)
        if s.bridge_id is not None:
            await self._ari_cleanup(self.ari.destroy_bridge(s.bridge_id), f"bridge {s.bridge_id}")
        if hangup_caller:
            await self._delete_channel(s.caller_channel_id, "caller")
        with _step(s.call_id, "deleting files"):
            self._delete_files(h)

    async def _delete_channel(self, channel_id: str, what: str) -> None:
        await self._ari_cleanup(self.ari.hangup(channel_id), f"{what} channel {channel_id}")

    async def _ari_cleanup(self, coro, what: str) -> None:
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

    def _delete_files(self, h: CallHandle) -> None:
        media_dir: Path = self.config.storage.media_dir
        if not media_dir.is_dir():
            return
        for f in media_dir.glob(f"{h.token}-*"):
            try:
                f.unlink()
            except OSError as e:
                log.warning("[%s] could not delete %s: %s", h.session.call_id, f, e)

    async def shutdown(self) -> None:
        self.closing = True
        tasks = [self.begin_teardown(h, "engine shutdown", hangup_caller=True) for h in list(self.handles.values())]
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- reconcile after (re)connect
    async def reconcile(self, reconnect: bool) -> None:
        """Compare what Asterisk still has with what the engine holds: carry on with calls that are
        fully there, end the ones that lost a part, delete leftovers of ours nobody owns."""
        channels = {c.id: c for c in await self.ari.list_channels()}
        bridges = {b.id for b in await self.ari.list_bridges()}
        for h in list(self.handles.values()):
            s = h.session
            if h.teardown_task is not None or s.state is CallState.CONNECTING:
                continue  # setup in progress reports its own failures
            if s.caller_channel_id not in channels:
                self.begin_teardown(h, "caller left while ARI was disconnected", hangup_caller=False)
            elif s.external_channel_id not in channels or s.bridge_id not in bridges:
                self.begin_teardown(h, "media path lost while ARI was disconnected", hangup_caller=True)
            elif reconnect:
                self.store.log(s.call_id, logging.INFO, "call carried on across ARI reconnect")
        self._recover_pending_external(channels)
        owned_ext = {f"{self.ext_prefix}{h.token}" for h in self.handles.values()}
        owned_bridges = {f"{self.bridge_prefix}{h.token}" for h in self.handles.values()}
        orphans: list[str] = []
        for cid, ch in channels.items():
            if cid.startswith(self.ext_prefix):
                if cid not in owned_ext and cid not in self._pending_external:
                    self._spawn(self._delete_channel(cid, "leftover ExternalMedia"))
            elif ch.in_stasis_app(self.app) and cid not in self.handles:
                orphans.append(cid)
        for bid in bridges:
            if bid.startswith(self.bridge_prefix) and bid not in owned_bridges:
                self._spawn(self._ari_cleanup(self.ari.destroy_bridge(bid), f"leftover bridge {bid}"))
        if orphans:
            self._spawn(self._adopt_orphans(orphans))

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
            h = self._by_token.get(ext_id[len(self.ext_prefix):])
            if h is not None and h.session.external_channel_id == ext_id:
                fut.set_exception(ExternalMediaLost("ExternalMedia channel was gone after the ARI reconnect"))

    async def _adopt_orphans(self, candidates: list[str]) -> None:
        """Callers in our Stasis app that no call owns: their StasisStart was lost in a socket gap,
        or an earlier engine process served them. Each gets a call as if it had just arrived."""
        await asyncio.sleep(ORPHAN_GRACE_S)  # a StasisStart may still be on its way
        for cid in candidates:
            if cid in self.handles:
                continue
            try:
                ch = await self.ari.get_channel(cid)
            except (AriError, AriUnavailable):
                continue  # gone meanwhile
            if cid in self.handles:
                continue
            args = [a.strip() for a in ch.dialplan.app_data.split(",")[1:] if a.strip()]
            self.store.log(cid, logging.WARNING, "caller in our Stasis app with no call behind it (lost StasisStart or engine restart): taking the call")
            self._on_stasis_start(StasisStart(type="StasisStart", channel=ch, args=args))
