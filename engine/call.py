"""One call: what it does with its media, its provider session and its agent's playback.

A ``Call`` owns everything one caller's conversation holds (the media stream state, the
conversation, the provider call, the downstream, its tasks), built with its collaborators passed
in. Call control (engine/calls.py) creates it once the caller is answered and tears it down; in
between, the Call is the media's owner (``MediaOwner``) and the provider's listener.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine

from engine.actions import ActionCounters, CallActions
from engine.api import AudioTap
from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.capacity import Overload
from runtime.clock import Clock
from engine.config import AppConfig
from engine.conversation import ConversationCoordinator
from engine.media import CallMedia, MediaLink
from engine.operator import OperatorSeat
from engine.playback import Downstream, FilePlayback, StreamPlayback
from engine.recording import CallRecording, Recordings
from engine.pacer import Outbound
from engine.status import ConversationCounters, PlaybackCounters
from engine.sessions import CallSession, ConversationState, ProviderSession, SessionStore, TurnTimeline
from runtime.tasks import OwnedTasks
from media.audio import ulaw_to_pcm16
from media.frames import FRAME_MS, RATE
from providers.base import ActionRequest, CallContext, Provider, ProviderCall, ProviderError, ProviderEvent

log = logging.getLogger(__name__)

PROVIDER_STOP_TIMEOUT_S = 5.0
TRANSCRIPT_VARIABLE = "AIAGENT_TRANSCRIPT"  # the dialplan/CDR can read what the caller said

ProviderLookup = Callable[[str], Awaitable[Provider]]


class ProviderUnavailable(RuntimeError):
    """A provider that cannot take a call now (not ready, or no fallback to take it instead)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallServices:
    """What every call of one engine shares: passed to each Call by call control."""

    config: AppConfig
    ari: AriClient
    store: SessionStore
    outbound: Outbound  # paces every call's agent audio out, whatever its transport
    get_provider: ProviderLookup
    clock: Clock
    playback_counters: PlaybackCounters
    conversation_counters: ConversationCounters
    action_counters: ActionCounters
    observe_turn: Callable[[TurnTimeline], None]  # the metrics: an answered turn
    recordings: Recordings | None = None
    overload: Overload | None = None  # counts the turns the models could not serve


class Call:
    def __init__(self, services: CallServices, session: CallSession, token: str, end: Callable[[Call, str], None]) -> None:
        self.services = services
        self.session = session
        self.token = token  # names the call's bridge, ExternalMedia channel and files; never caller text
        self._end = end  # call control ends the call (hangs the caller up) on a failure it cannot survive
        self.media: CallMedia | None = None
        self.recording: CallRecording | None = None  # the profile records calls
        self.provider_call: ProviderCall | None = None
        self.provider: Provider | None = None  # the provider_call's
        self.conversation: ConversationCoordinator | None = None
        self.setup_task: asyncio.Task[None] | None = None
        self.teardown_task: asyncio.Task[None] | None = None
        self._tasks = OwnedTasks(f"[{session.call_id}] call")
        # The config as it was when the call came in: a reload changes the calls after it, not this one.
        self.config = services.config
        self.profile = self.config.profiles[session.profile]
        self.actions = CallActions(
            host=self, session=session, profile=self.profile, store=services.store, counters=services.action_counters,
            ari=services.ari, app=self.config.asterisk.app, clock=services.clock, end=lambda why: end(self, why),
        )
        self.operator = OperatorSeat(host=self, session=session, store=services.store, counters=services.action_counters, clock=services.clock, outbound=services.outbound)

    @property
    def call_id(self) -> str:
        return self.session.call_id

    @property
    def ending(self) -> bool:
        return self.teardown_task is not None

    # ---- tasks: the call owns them; a failed one is its error, logged with the traceback
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    @property
    def task_errors(self) -> int:
        return self._tasks.errors

    # ---- start
    async def start_media(self, link: MediaLink) -> None:
        """Opens the provider session, the conversation and the media stream over ``link``. A link
        the call's media never took is closed here; once taken, the teardown closes it."""
        try:
            await self._start_media(link)
        except BaseException:
            if self.media is None:
                link.close()
            raise

    async def _start_media(self, link: MediaLink) -> None:
        sv = self.services
        s = self.session
        assert s.provider is not None
        provider, pcall = await self._open_for_setup(s.provider.name)
        self.provider, self.provider_call = provider, pcall
        cfg = self.config
        self.conversation = ConversationCoordinator(
            vad=cfg.vad, barge_in=cfg.barge_in, playback=cfg.playback, session=s, store=sv.store, provider_call=pcall,
            half_duplex=provider.half_duplex, continuous_input=provider.continuous_input, counters=sv.conversation_counters,
            observe_turn=sv.observe_turn, spawn=self.spawn, clock=sv.clock, on_state=self.actions.watchdog.state,
            on_caller_words=self._caller_said, on_turn_failed=self._turn_failed, on_hold=self.operator.action_begins,
        )
        frames = self.config.playback.stream_queue_max_ms // FRAME_MS
        self.media = CallMedia(s, link, self, max_queue_frames=frames)
        if self.profile.record and sv.recordings is not None:
            rec = self.recording = sv.recordings.start(s.call_id, sv.clock.now)
            s.recording, s.recording_started_at = str(rec.path), time.time()
            self.conversation.recording = self.media.recording = rec
        if self.config.playback.downstream_mode == "stream":
            self._use_stream()
        else:
            self._use_files()
        try:
            await pcall.start()
        except Exception as e:
            fallback = self._take_fallback(s.provider.name, f"provider {s.provider.name} failed to start: {e.__class__.__name__}: {e}")
            self.spawn(pcall.stop())
            provider, pcall = await self._open_provider_call(fallback)
            self.provider, self.provider_call = provider, pcall
            self.conversation.replace_provider(pcall, provider.half_duplex, provider.continuous_input)
            await pcall.start()
        # The watchdog needs a provider that listens in turns and can speak a line.
        self.actions.watch(self.profile.silence_prompt_s > 0 and provider.half_duplex and provider.speaks_text)
        s.provider.ready = True
        s.provider.started_at = sv.clock.now()
        link.attach(self.media)
        if s.conversation is ConversationState.LISTENING:  # no greeting: the caller's turn now
            self.actions.watchdog.state(ConversationState.LISTENING)

    async def _open_for_setup(self, name: str) -> tuple[Provider, ProviderCall]:
        """The provider chosen at StasisStart, or its fallback if that one cannot take the call
        now: while the caller was answered and bridged its circuit may have opened (another call
        found it down) or a model server gone away. The call fails only if the fallback fails too."""
        try:
            return await self._open_provider_call(name)
        except Exception as e:
            why = str(e) if isinstance(e, ProviderUnavailable) else f"provider {name} failed to open the call: {e.__class__.__name__}: {e}"
            fallback = self._take_fallback(name, why)
        return await self._open_provider_call(fallback)

    def _take_fallback(self, name: str, why: str) -> str:
        """The call moves to ``name``'s fallback before it has begun: said once in the call's log,
        and kept on the call (its provider error) for the console and the history. Raises
        ProviderUnavailable when there is none."""
        fallback = self.config.providers.fallback_for(name)
        if not fallback or fallback == name:
            raise ProviderUnavailable(f"{why}; no fallback provider is configured")
        self.session.provider = ProviderSession(fallback, errors=1, last_error=f"{why}: the call went to {fallback}")
        self.services.store.log(self.call_id, logging.WARNING, f"{why}: the call goes to the fallback provider {fallback}")
        return fallback

    async def _open_provider_call(self, name: str) -> tuple[Provider, ProviderCall]:
        s = self.session
        provider = await self.services.get_provider(name)
        ready = provider.readiness()
        if not ready.ready:
            raise ProviderUnavailable(f"provider {name} is not ready: {ready.detail}")
        vad = self.config.vad
        ctx = CallContext(
            call_id=s.call_id,
            caller_number=s.caller_number,
            caller_name=s.caller_name,
            preroll_ms=vad.preroll_ms,
            fallback_window_ms=vad.fallback_interval_ms,
            profile=self.profile,
            clock=self.services.clock,
        )
        pcall = provider.open_call(ctx, lambda ev: self._provider_said(pcall, ev))
        return provider, pcall

    async def switch_provider(self, name: str, why: str) -> None:
        """Moves the call to another provider: the new one takes over at once if the call is
        listening, else at its next turn; the old one is stopped when it is replaced."""
        conv = self.conversation
        if conv is None or self.ending:
            return
        provider, pcall = await self._open_provider_call(name)
        await pcall.start()
        old = self.provider_call
        self.provider, self.provider_call = provider, pcall
        self.session.provider = ProviderSession(name, started_at=self.services.clock.now(), ready=True)
        conv.replace_provider(pcall, provider.half_duplex, provider.continuous_input)
        self.services.store.log(self.call_id, logging.WARNING if "fail" in why else logging.INFO, f"provider now {name}: {why}")
        self.operator.carry_over(pcall, name)
        if old is not None:
            self.spawn(old.stop())

    def bridged(self) -> None:
        """The ExternalMedia channel is in the bridge: the agent's audio may go out."""
        self.session.bridged_at = self.services.clock.now()
        if self.media is not None:
            self.media.bridged = True  # an operator's audio is paced frames in both playback modes
        if (d := self._downstream) is not None:
            d.bridged()

    # ---- downstream: how the agent's audio reaches the caller
    def _use_files(self) -> FilePlayback:
        conv = self.conversation
        assert conv is not None
        sv = self.services
        files = conv.voice.downstream = FilePlayback(
            ari=sv.ari, session=self.session, token=self.token, media_dir=self.config.storage.media_dir,
            config=self.config.playback, counters=sv.playback_counters, spawn=self.spawn,
            on_tokens_changed=conv.tokens_changed, on_first_audio=conv.first_audio_out, reference=conv.reference,
            clock=sv.clock, recording=self.recording,
        )
        return files

    def _use_stream(self) -> None:
        conv, media = self.conversation, self.media
        assert conv is not None and media is not None
        conv.voice.downstream = StreamPlayback(outbound=self.services.outbound, media=media, on_tokens_changed=conv.tokens_changed, on_first_audio=conv.first_audio_out)

    @property
    def _downstream(self) -> Downstream | None:
        return self.conversation.voice.downstream if self.conversation is not None else None

    def stream_send_failed(self) -> None:
        """Sends to Asterisk keep failing for this call: play its audio as files instead."""
        old = self._downstream
        queued = old.send_failed() if old is not None else None
        if old is None or queued is None:
            return
        old.close()
        files = self._use_files()
        self.services.playback_counters.stream_fallbacks += 1
        self.services.store.log(self.call_id, logging.WARNING, "stream playback failed (send errors): falling back to file playback for this call")
        if queued:
            files.add(ulaw_to_pcm16(queued), RATE)
            files.finish()

    # ---- MediaOwner: what the call's media stream reports
    def caller_audio(self, pcm8: bytes, lost: int) -> None:
        if self.conversation is not None:
            self.conversation.on_caller_pcm8(pcm8, lost)

    def stream_started(self, at: float) -> None:
        if not self.operator.taken_over and (d := self._downstream) is not None:  # an operator's stream is not the agent's
            d.stream_started(at)

    def stream_drained(self) -> None:
        if not self.operator.taken_over and (d := self._downstream) is not None:
            d.drained()

    def media_lost(self, reason: str) -> None:
        """The media connection is gone (a stream transport's connection cut, a hangup sent on it):
        nothing more can be heard or said, so the call ends, with the reason in its log."""
        if not self.ending:
            self.services.store.log(self.call_id, logging.WARNING, f"media lost: {reason}")
            self._end(self, f"media lost: {reason}")

    # ---- ARI playback events of this call's bridge (file mode)
    def playback_event(self, playback_id: str, started: bool, state: str) -> None:
        if (d := self._downstream) is not None:
            d.playback_event(playback_id, started, state)

    # ---- provider events: the call-level ones here, the rest the conversation's
    def _provider_said(self, source: ProviderCall, ev: ProviderEvent) -> None:
        if self.ending or source is not self.provider_call:
            return  # a provider call that was replaced has nothing more to say
        match ev:
            case ActionRequest():
                self.actions.request(ev, by="agent")
            case ProviderError():
                self._provider_failed(ev)
            case _:
                if self.conversation is not None:
                    self.conversation.on_provider_event(ev)

    def _provider_failed(self, ev: ProviderError) -> None:
        s = self.session
        assert s.provider is not None
        s.provider.errors += 1
        s.provider.last_error = ev.message
        self.services.store.log(s.call_id, logging.ERROR, f"provider {s.provider.name}: {ev.message}")
        if ev.fatal:
            fallback = self.config.providers.fallback_for(s.provider.name)
            if fallback and fallback != s.provider.name:
                self.spawn(self._fall_back(fallback, ev.message))
            else:
                self._end(self, f"provider error: {ev.message}")

    def _turn_failed(self, reason: str, busy: bool) -> None:
        if self.services.overload is not None:
            self.services.overload.turn_failed(self.session, reason, busy)

    async def _fall_back(self, name: str, why: str) -> None:
        try:
            await self.switch_provider(name, f"{self.session.provider.name if self.session.provider else '?'} failed ({why})")
        except Exception as e:
            self.services.store.log(self.call_id, logging.ERROR, f"fallback provider {name} failed too: {e}")
            self._end(self, f"provider error: {why}")

    def _caller_said(self, text: str) -> None:
        self.spawn(self._set_transcript_var(text))

    async def _set_transcript_var(self, text: str) -> None:
        try:
            await self.services.ari.set_variable(self.session.caller_channel_id, TRANSCRIPT_VARIABLE, text[-1000:])
        except (AriError, AriUnavailable) as e:
            log.debug("could not set %s on %s: %s", TRANSCRIPT_VARIABLE, self.session.caller_channel_id, e)

    # ---- operator commands
    def barge_in(self) -> bool:
        """The operator stops the agent; False when it is not speaking (nothing is counted)."""
        if self.conversation is None or not self.conversation.agent_is_speaking:
            return False
        self.conversation.barge_in(forced=True)
        return True

    def set_tap(self, key: str, tap: AudioTap | None) -> bool:
        if self.conversation is None:
            return False
        self.conversation.taps.set(key, tap)
        return True

    # ---- end
    async def release(self) -> None:
        """Stops what the call runs here: its tasks, its audio in both directions, its provider
        session. Asterisk's side (channels, bridge) is call control's to release."""
        self.actions.watchdog.close()
        await self._tasks.cancel()
        try:
            if self.media is not None:
                # The link stays until the media channel is gone (call control closes it), so that
                # packets still in flight are recognised (and dropped here) rather than counted as foreign.
                self.media.owner = None
                self.services.outbound.discard(self.media)
            if self.conversation is not None:
                self.conversation.close()
            if self.recording is not None and self.services.recordings is not None:
                self.services.recordings.finish(self.recording)
        except Exception as e:
            log.error("[%s] teardown: stopping media failed: %s", self.call_id, e, exc_info=e)
        if self.provider_call is not None:
            try:
                await asyncio.wait_for(self.provider_call.stop(), PROVIDER_STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("[%s] provider stop took over %.0f s", self.call_id, PROVIDER_STOP_TIMEOUT_S)
            except Exception as e:
                log.error("[%s] teardown: provider stop failed: %s", self.call_id, e, exc_info=e)

    def delete_files(self) -> None:
        media_dir = self.config.storage.media_dir
        if not media_dir.is_dir():
            return
        for f in media_dir.glob(f"{self.token}-*"):
            try:
                f.unlink()
            except OSError as e:
                log.warning("[%s] could not delete %s: %s", self.call_id, f, e)
