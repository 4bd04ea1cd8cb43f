"""ConversationCoordinator: per call, who may speak when.

It owns the call's capture, gating and barge-in state: it runs the VAD on the caller's frames,
decides which frames reach the provider (none while the agent speaks, unless the caller barges
in), marks utterance boundaries (VAD end, or the fallback timer when the VAD hears nothing), sends
the provider's answer down the call's playback path, and keeps the turn timeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable, assert_never

from runtime.clock import Clock, Timer
from engine.config import BargeInConfig, PlaybackConfig, VadConfig
from engine.playback import Downstream, Spawn
from engine.recording import CallRecording
from engine.status import ConversationCounters
from engine.sessions import (
    BargeIn,
    CallSession,
    CallState,
    ConversationChanged,
    QUIET_MIN_S,
    ConversationState,
    SessionStore,
    TranscriptTurn,
    TurnCompleted,
    TurnTimeline,
)
from media.audio import Resampler, rms_dbfs
from media.frames import FRAME_MS, FRAME_S, RATE, SILENT_PCM_FRAME, frames_in, packet_frames
from media.playback_reference import PlaybackReference
from media.vad import VoiceActivity
from providers.base import (
    INPUT_SAMPLE_RATE,
    AgentAudio,
    AgentSpeakingStarted,
    AgentSpeakingStopped,
    CallerFinished,
    CallerInterrupted,
    ConversationEvent,
    EarlyAnswer,
    ProviderCall,
    Transcript,
    TurnFailed,
    TurnMark,
)

log = logging.getLogger(__name__)

FILL_CHECK_S = 0.1
GAP_S = 2 * FRAME_S  # no packet this long: the phone has stopped sending (DTX), not merely jitter
SILENCE_DBFS = -96.0
HISTORY_MAX_EVENTS = 200  # barge-ins and quiet spells kept per call (a storm is clear long before)


_CALL_STATE = {
    ConversationState.LISTENING: CallState.STREAMING,
    ConversationState.USER_SPEAKING: CallState.STREAMING,
    ConversationState.PROCESSING: CallState.PROCESSING,
    ConversationState.AGENT_SPEAKING: CallState.SPEAKING,
}


class ConversationCoordinator:
    """What happens on one call when the caller's audio comes in or its provider says something."""

    def __init__(
        self,
        *,
        vad: VadConfig,
        barge_in: BargeInConfig,
        playback: PlaybackConfig,
        session: CallSession,
        store: SessionStore,
        provider_call: ProviderCall,
        half_duplex: bool,
        continuous_input: bool,
        counters: ConversationCounters,
        observe_turn: Callable[[TurnTimeline], None],
        spawn: Spawn,
        clock: Clock,
        on_state: Callable[[ConversationState], None] = lambda state: None,
        on_caller_words: Callable[[str], None] = lambda text: None,  # all the caller has said, at each final transcript
        on_turn_failed: Callable[[str, bool], None] = lambda reason, busy: None,  # TurnFailed: the engine counts it
    ) -> None:
        self.session = session
        self.store = store
        self.provider_call = provider_call
        self.half_duplex = half_duplex
        self.counters = counters
        self._filler: Timer | None = None
        self.continuous_input = False
        # An operator listening in (the terminal app's monitor): gets ("caller"|"agent", pcm, rate).
        self.tap: Callable[[str, bytes, int], None] | None = None
        self.recording: CallRecording | None = None  # the call's, when its profile records
        self._observe_turn = observe_turn  # the metrics: an answered turn
        self._spawn = spawn
        self._clock = clock
        self._on_caller_words = on_caller_words
        self._on_turn_failed = on_turn_failed
        self.vad = VoiceActivity(vad.aggressiveness, vad.start_ms, vad.end_ms, vad.min_level_dbfs)
        self._up = Resampler(RATE, INPUT_SAMPLE_RATE)
        self.reference = PlaybackReference()
        self.downstream: Downstream | None = None
        self._fallback_frames = frames_in(vad.fallback_interval_ms)
        self._unvoiced_frames = 0
        self._barge_enabled = barge_in.enabled
        self._barge_frames = frames_in(barge_in.min_ms)
        self._barge_level = barge_in.min_level_dbfs
        self._barge_run: deque[tuple[bytes, float]] = deque(maxlen=self._barge_frames)  # (frame, level)
        self._pause_frames = frames_in(barge_in.pause_ms) if barge_in.pause_ms else 0
        self._pause_timer: Timer | None = None  # set while the agent's audio is held on a run of caller sound
        self._gating_tail_s = playback.gating_tail_ms / 1000
        self._ungate: Timer | None = None
        # A two-party bridge sends nothing while the caller is silent (BEHAVIOUR.md): speech can
        # end with packets simply stopping, which the VAD never sees. This timer catches that.
        self._end_s = vad.end_ms / 1000
        self._last_frame_at = clock.now()
        self._last_voice_at: float | None = None  # the caller's last voiced frame since the last turn ended
        self._filled_until = 0.0
        self._gap_timer: Timer | None = None
        self._turn: TurnTimeline | None = None
        self._agent_turn_open = False
        self._answer_audio_s = 0.0  # agent audio handed down for the answer being spoken
        self._on_state = on_state
        # An action is under way (transfer, hangup): the caller is no longer listened to.
        self.held = False
        self._audio_pieces = 0  # agent audio handed down, counted
        self._played_out: list[tuple[int, asyncio.Future[None]]] = []  # (pieces when asked, done)
        self._set_continuous(continuous_input)

    # ---- the provider's news about the conversation (its call-level news is the Call's)
    def on_provider_event(self, ev: ConversationEvent) -> None:
        match ev:
            case AgentAudio(pcm16=pcm16, sample_rate=rate):
                self._agent_audio(pcm16, rate)
            case AgentSpeakingStarted():
                self._agent_started()
            case AgentSpeakingStopped():
                self._agent_finished()
            case Transcript():
                self._transcript(ev)
            case TurnMark(stage=stage, at=at):
                self._mark(stage, at)
            case CallerFinished():
                self._caller_finished()
            case EarlyAnswer(used=used):
                self._early_answer(used)
            case CallerInterrupted():
                if self.agent_is_speaking:
                    self.barge_in(forced=False)
            case TurnFailed(reason=reason, busy=busy):
                self._on_turn_failed(reason, busy)
            case _:
                assert_never(ev)

    def _transcript(self, ev: Transcript) -> None:
        s = self.session
        self.store.add_transcript(s, TranscriptTurn(ev.role, ev.text, ev.final, self._clock.now()))
        if ev.role == "caller" and ev.final:
            self._on_caller_words(" ".join(t.text for t in s.transcript if t.role == "caller"))

    # ---- caller audio (hot path: 50 frames/s per call)
    def on_caller_pcm8(self, pcm8: bytes, lost: int = 0) -> None:
        """One packet of the caller's audio; ``lost``: packets missing before it."""
        if self.tap is not None:
            self.tap("caller", pcm8, RATE)
        if self.held:
            if self.recording is not None:
                self.recording.caller(pcm8)
            return
        for frame in packet_frames(pcm8):
            self._frame(frame, lost)
            lost = 0

    def _frame(self, frame: bytes, lost: int) -> None:
        s = self.session
        voice = s.voice
        self._last_frame_at = self._clock.now()
        if self.reference.active:
            # File mode: the bridge mixes the agent's own playback into this stream; take it out
            # so that only the caller is left.
            frame = self.reference.residual(frame, lost)
        if self.recording is not None:  # the caller alone: in file mode, the agent's echo taken out
            self.recording.caller(frame)
        if self.half_duplex and not s.capture_enabled:
            # The agent is speaking: listen only for the caller talking over it.
            probe = frame
            level = self.vad.level_dbfs = rms_dbfs(probe)
            voice.level_dbfs = level
            voice.levels.append(level)
            voiced = level >= self._barge_level and self.vad.is_voiced(probe, level)
            if voiced:
                self._barge_run.append((probe, level))
                if self._barge_enabled:
                    if len(self._barge_run) >= self._barge_frames:
                        self.barge_in(forced=False)
                        return
                    if (
                        self._pause_frames and len(self._barge_run) >= self._pause_frames and self._pause_timer is None
                        and self.downstream is not None and self.downstream.pause(True)
                    ):
                        # The caller may be talking over the agent: its audio is held now (the
                        # caller hears it stop within a frame) and the run decides. A phone with
                        # DTX sends nothing once its user is quiet: no quiet frame would end the
                        # run, so a timer does.
                        self.counters.barge_in_pauses += 1
                        self._pause_timer = self._clock.call_later((self._barge_frames + 3) * FRAME_S, self._pause_expired)
            else:
                if len(self._barge_run) >= 3:  # 60 ms or more, but not enough to stop the agent
                    self.counters.barge_in_attempts += 1
                self._barge_run.clear()
                self._end_pause(resume=True)
            if self.continuous_input:
                # Such a provider finds barge-ins itself: it hears what may be the caller talking
                # over the agent (the agent's own voice taken out), and silence otherwise.
                self._deliver(probe, level) if voiced else self._deliver(SILENT_PCM_FRAME, SILENCE_DBFS)
            return
        edge = self.vad.update(frame)
        if self.vad.voiced:
            self._last_voice_at = self._last_frame_at
        level = voice.level_dbfs = self.vad.level_dbfs
        voice.levels.append(level)
        if edge == "start":
            self._speech_started()
        elif edge == "end":
            self._speech_ended(fallback=False)
        self._deliver(frame, level)
        if not self.vad.speaking:
            self._unvoiced_frames += 1
            if self._unvoiced_frames >= self._fallback_frames:
                self._unvoiced_frames = 0
                self.counters.fallback_flushes += 1
                self._speech_ended(fallback=True)
        else:
            self._unvoiced_frames = 0

    def _deliver(self, frame: bytes, level_dbfs: float) -> None:
        pcm16 = self._up.process(frame)
        if pcm16:
            self.provider_call.send_audio(pcm16, level_dbfs)

    def _speech_started(self) -> None:
        self.session.voice.speaking = True
        self._unvoiced_frames = 0
        if self._gap_timer is None:
            self._gap_timer = self._clock.call_later(self._end_s, self._check_gap)
        self.provider_call.utterance_started()
        self._set_state(ConversationState.USER_SPEAKING)

    def _check_gap(self) -> None:
        """Packets stopped while the caller was speaking (a DTX phone goes quiet a few frames after
        its user does): the quiet counts from the caller's last voiced frame, as the VAD counts
        silent frames, so a turn ends ``end_ms`` after the voice whether the phone sends its
        silence or not (counted from the last packet, the trailing silent frames added to it)."""
        self._gap_timer = None
        if not self.vad.speaking:
            return
        now = self._clock.now()
        quiet_since = self._last_voice_at if self._last_voice_at is not None else self._last_frame_at
        wait = self._end_s - (now - quiet_since)
        if wait <= 0 and now - self._last_frame_at >= GAP_S:
            self.vad.reset()
            self._speech_ended(fallback=False)
        else:
            self._gap_timer = self._clock.call_later(max(wait, GAP_S), self._check_gap)

    def _speech_ended(self, fallback: bool) -> None:
        self.session.voice.speaking = False
        if not fallback or self._turn is None or self._turn.first_audio_out is not None:
            self._turn = TurnTimeline(speech_end=self._clock.now(), last_voice_in=self._last_voice_at)
            self._last_voice_at = None  # a later turn counts from its own voice (a fallback flush may have none)
        self.provider_call.utterance_ended(fallback)
        if not fallback and self.half_duplex:
            self._set_state(ConversationState.PROCESSING)
        elif self.session.conversation is ConversationState.USER_SPEAKING:
            self._set_state(ConversationState.LISTENING)

    def _caller_finished(self) -> None:
        """The provider read the caller's words as complete at a pause (providers.base.CallerFinished):
        the turn ends now instead of after the VAD's hangover (the provider has checked that the
        caller has not spoken since). Only a turn still open is ended."""
        if not self.vad.speaking:
            return
        self.counters.early_ends += 1
        self.vad.reset()
        self._speech_ended(fallback=False)

    def _early_answer(self, used: bool) -> None:
        if used:
            self.counters.early_answers_used += 1
        else:
            self.counters.early_answers_dropped += 1

    def _set_continuous(self, on: bool) -> None:
        self.continuous_input = on
        if on and self._filler is None:
            self._filler = self._clock.call_later(FILL_CHECK_S, self._fill_gap)
        elif not on and self._filler is not None:
            self._filler.cancel()
            self._filler = None

    def _fill_gap(self) -> None:
        """No RTP for a while: give a continuous-input provider the silence it did not get."""
        now = self._clock.now()
        missing = int((now - max(self._last_frame_at, self._filled_until)) / FRAME_S)
        if missing >= 3:
            for _ in range(missing):
                self._deliver(SILENT_PCM_FRAME, SILENCE_DBFS)
            self._filled_until = now
        self._filler = self._clock.call_later(FILL_CHECK_S, self._fill_gap)

    def replace_provider(self, provider_call: ProviderCall, half_duplex: bool, continuous_input: bool) -> None:
        """Another provider takes the call over from here on."""
        self.provider_call = provider_call
        self.half_duplex = half_duplex
        self._set_continuous(continuous_input)
        if self.session.conversation is ConversationState.PROCESSING:
            self._set_state(ConversationState.LISTENING)

    @property
    def agent_is_speaking(self) -> bool:
        return bool(self.session.playbacks) or self.session.conversation is ConversationState.AGENT_SPEAKING

    # ---- agent audio
    def _agent_started(self) -> None:
        self._agent_turn_open = True
        self._answer_audio_s = 0.0

    def _agent_audio(self, pcm16: bytes, sample_rate: int) -> None:
        if self.downstream is None:
            return
        if self.tap is not None:
            self.tap("agent", pcm16, sample_rate)
        self.downstream.add(pcm16, sample_rate)
        if self.session.conversation is not ConversationState.AGENT_SPEAKING:
            if not self._agent_turn_open:
                self._answer_audio_s = 0.0
            self._set_state(ConversationState.AGENT_SPEAKING)
        self._answer_audio_s += len(pcm16) / 2 / sample_rate
        self._audio_pieces += 1

    def _agent_finished(self) -> None:
        self._agent_turn_open = False
        if self.downstream is not None:
            self.downstream.finish()

    def _mark(self, stage: str, at: float) -> None:
        """A provider stage of the current turn (see providers.base.TurnMark)."""
        if stage == "no_answer":
            if self.session.conversation is ConversationState.PROCESSING:
                self._set_state(ConversationState.LISTENING)
            return
        t = self._turn
        # After the first audio too: behind a hold line, the answer's own stages still count.
        if t is not None and getattr(t, stage) is None:
            setattr(t, stage, at)

    def first_audio_out(self, at: float, handed: float | None = None) -> None:
        """The downstream put agent audio on the line (a frame sent, a playback started);
        ``handed``: when the engine asked for it (a playback's request), if earlier."""
        t = self._turn
        if t is None or t.first_audio_out is not None:
            return
        t.first_audio_out = at
        t.audio_handed = handed if handed is not None else at
        work = self.provider_call.work
        if work is not None and t.speech_end is not None:
            share = work.share(t.speech_end, t.audio_handed)
            t.in_models_s, t.queued_s = share.inside_s, share.queued_s
        self.session.turns.append(t)
        self.counters.turns += 1
        self._observe_turn(t)
        self.store.publish(TurnCompleted(self.session.call_id, t))

    def tokens_changed(self) -> None:
        """Gating follows the session's playback tokens: muted while any is held, and for a
        short tail after the last (the bridge's mix lags the playback by a frame or two)."""
        s = self.session
        if not self.half_duplex:
            return
        if s.playbacks:
            if self._ungate is not None:
                self._ungate.cancel()
                self._ungate = None
            if s.capture_enabled:
                self._set_capture(False)
        elif not s.capture_enabled and self._ungate is None:
            self._ungate = self._clock.call_later(self._gating_tail_s, self._reopen)

    def _reopen(self) -> None:
        self._ungate = None
        if self.session.playbacks:
            return
        self._set_capture(True)
        if not self._agent_turn_open:
            waiting = []
            for since, fut in self._played_out:
                if since < self._audio_pieces and not fut.done():
                    fut.set_result(None)
                elif not fut.done():
                    waiting.append((since, fut))
            self._played_out = waiting
            if self.session.conversation is ConversationState.AGENT_SPEAKING:
                self._set_state(ConversationState.LISTENING)

    def played_out(self) -> asyncio.Future[None]:
        """Resolves once agent audio handed down from now on (a line about to be said) has
        played to the caller."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._played_out.append((self._audio_pieces, fut))
        return fut

    def hold(self) -> float | None:
        """An action begins: stop listening to the caller and stop what the agent is saying, so
        that the action's own line comes next. Returns how much of the interrupted answer was
        heard (None if the agent was not speaking), for the provider's history."""
        self.held = True
        self._barge_run.clear()
        self.vad.reset()
        self.session.voice.speaking = False
        played = self._stop_agent()
        self._set_state(ConversationState.LISTENING)
        return played

    def _stop_agent(self) -> float | None:
        """Stops the agent's audio now; how much of its answer the caller heard."""
        self._agent_turn_open = False
        if self.downstream is None:
            return None
        speaking = self.agent_is_speaking
        unplayed = self.downstream.stop()
        return max(0.0, self._answer_audio_s - unplayed) if speaking else None

    # ---- barge-in
    def _end_pause(self, resume: bool) -> None:
        """Ends a pause, if there is one: ``resume`` when the run of caller sound ended short of a
        barge-in (not the caller talking: a cough, a click, echo), so the agent goes on from
        where it paused; else the barge-in drops what was held."""
        timer, self._pause_timer = self._pause_timer, None
        if timer is None:
            return
        timer.cancel()
        if resume:
            self.counters.false_pauses += 1
            if self.downstream is not None:
                self.downstream.pause(False)

    def _pause_expired(self) -> None:
        self._barge_run.clear()
        self._end_pause(resume=True)

    def barge_in(self, forced: bool) -> None:
        """Stop the agent now: its playback, its queued audio, the answer being generated."""
        s = self.session
        onset = None if forced else self._clock.now() - len(self._barge_run) * FRAME_S
        heard = list(self._barge_run)
        self._barge_run.clear()
        self._end_pause(resume=False)  # the stop below drops what was held
        s.barge_ins += 1
        if len(s.barge_in_at) < HISTORY_MAX_EVENTS:
            s.barge_in_at.append(self._clock.now())
        self.counters.barge_ins += 1
        if forced:
            self.counters.barge_ins_forced += 1
        played = self._stop_agent()
        self._spawn(self.provider_call.cancel_response(played))
        if self._ungate is not None:
            self._ungate.cancel()
            self._ungate = None
        self._set_capture(True)
        reaction = None if onset is None else self._clock.now() - onset
        self.store.publish(BargeIn(s.call_id, forced, reaction))
        self.store.log(s.call_id, logging.INFO, "barge-in (operator)" if forced else f"barge-in: caller spoke over the agent for {len(heard) * FRAME_MS} ms")
        if heard:
            # The caller's first words are the start of the next utterance.
            self.vad.reset()
            self.vad.speaking = True
            self._last_voice_at = self._clock.now()  # the run's last frame was voiced
            self._speech_started()
            for frame, level in heard:
                self._deliver(frame, level)
        else:
            self._set_state(ConversationState.LISTENING)

    # ---- state
    def _set_capture(self, enabled: bool) -> None:
        self.session.capture_enabled = enabled
        self._publish()

    def _set_state(self, state: ConversationState) -> None:
        s = self.session
        if s.conversation is state:
            return
        now = self._clock.now()  # the loop's monotonic time: the store's time base (CallSession.created_mono)
        if s.conversation is ConversationState.LISTENING and now - s.conversation_since >= QUIET_MIN_S and len(s.silences) < HISTORY_MAX_EVENTS:
            s.silences.append((s.conversation_since, now - s.conversation_since))
        s.conversation = state
        s.conversation_since = now
        self.store.set_state(s, _CALL_STATE[state])
        self._publish()
        self._on_state(state)

    def _publish(self) -> None:
        s = self.session
        self.store.publish(ConversationChanged(s.call_id, s.conversation, s.capture_enabled, bool(s.playbacks)))

    def close(self) -> None:
        for _, fut in self._played_out:
            fut.cancel()
        for timer in (self._ungate, self._gap_timer, self._filler, self._pause_timer):
            if timer is not None:
                timer.cancel()
        if self.downstream is not None:
            self.downstream.close()
