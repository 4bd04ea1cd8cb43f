"""ConversationCoordinator: per call, who may speak when.

It owns the call's capture, gating and barge-in state: it runs the VAD on the caller's frames,
decides which frames reach the provider (none while the agent speaks, unless the caller barges
in), marks utterance boundaries (VAD end, or the fallback timer when the VAD hears nothing), sends
the provider's answer down the call's playback path, and keeps the turn timeline.
"""

from __future__ import annotations

import logging
from typing import Callable, assert_never

from runtime.clock import Clock, Timer
from engine.config import BargeInConfig, PlaybackConfig, VadConfig
from engine.agent_voice import AgentVoice
from engine.api import AudioTaps
from engine.barge_in import BargeInListener
from runtime.tasks import Spawn
from engine.silence_fill import SilenceFill
from engine.turn_timing import TurnTiming
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

GAP_S = 2 * FRAME_S  # no packet this long: the phone has stopped sending (DTX), not merely jitter
SILENCE_DBFS = -96.0
HISTORY_MAX_EVENTS = 200  # barge-ins and quiet spells kept per call (a storm is clear long before)


_CALL_STATE = {
    ConversationState.LISTENING: CallState.STREAMING,
    ConversationState.USER_SPEAKING: CallState.STREAMING,
    ConversationState.PROCESSING: CallState.PROCESSING,
    ConversationState.AGENT_SPEAKING: CallState.SPEAKING,
    ConversationState.OPERATOR: CallState.STREAMING,  # media flows both ways: the caller and the operator
}


class ConversationCoordinator:
    """What happens on one call when the caller's audio comes in or its provider says something.
    Its parts: the caller's barge-ins (BargeInListener), the agent's audio and the capture gate
    (AgentVoice), the turns' timeline (TurnTiming)."""

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
        on_hold: Callable[[], None] = lambda: None,  # an action begins (hold): an operator's take-over ends with it
    ) -> None:
        self.session = session
        self.store = store
        self.provider_call = provider_call
        self.half_duplex = half_duplex
        self.counters = counters
        self._spawn = spawn
        self._clock = clock
        self._on_state = on_state
        self._on_caller_words = on_caller_words
        self._on_turn_failed = on_turn_failed
        self._on_hold = on_hold
        # An operator has the call (take_over): the agent's audio and turns are not the call's until
        # hand_back; the caller is still heard and transcribed.
        self.operator = False
        self.operator_lines: dict[str, str] = {}  # an operator's line for the agent (its text) -> who asked
        # Operators listening in (the terminal app's monitor, attached consoles): each gets
        # ("caller"|"agent"|"operator", pcm, rate).
        self.taps = AudioTaps()
        self.recording: CallRecording | None = None  # the call's, when its profile records
        self.held = False  # an action is under way (transfer, hangup): the caller is no longer listened to
        self.vad = VoiceActivity(vad.aggressiveness, vad.start_ms, vad.end_ms, vad.min_level_dbfs)
        self._up = Resampler(RATE, INPUT_SAMPLE_RATE)
        self.reference = PlaybackReference()  # file mode: the agent's echo, taken out of the caller's audio
        self.voice = AgentVoice(session=session, clock=clock, gating_tail_s=playback.gating_tail_ms / 1000, set_state=self._set_state, set_capture=self._set_capture)
        self._barge = BargeInListener(config=barge_in, vad=self.vad, counters=counters, clock=clock, pause_agent=self.voice.pause)
        self._timing = TurnTiming(session=session, store=store, counters=counters, observe_turn=observe_turn, clock=clock)
        self._fallback_frames = frames_in(vad.fallback_interval_ms)
        self._unvoiced_frames = 0
        # A two-party bridge sends nothing while the caller is silent (BEHAVIOUR.md): speech can
        # end with packets simply stopping, which the VAD never sees. The gap timer catches that.
        self._end_s = vad.end_ms / 1000
        self._last_frame_at = clock.now()
        self._last_voice_at: float | None = None  # the caller's last voiced frame since the last turn ended
        self._gap_timer: Timer | None = None
        self.continuous_input = False
        self._silence_fill = SilenceFill(clock=clock, silent_frame=lambda: self._deliver(SILENT_PCM_FRAME, SILENCE_DBFS), last_frame_at=lambda: self._last_frame_at)
        self._set_continuous(continuous_input)

    # ---- the provider's news about the conversation (its call-level news is the Call's)
    def on_provider_event(self, ev: ConversationEvent) -> None:
        if self.operator and isinstance(ev, (AgentAudio, AgentSpeakingStarted, AgentSpeakingStopped)):
            return  # the operator is speaking: nothing of the agent's goes out (a provider holds its answers)
        match ev:
            case AgentAudio(pcm16=pcm16, sample_rate=rate):
                if self.taps and self.voice.downstream is not None:
                    self.taps("agent", pcm16, rate)
                self.voice.audio(pcm16, rate)
            case AgentSpeakingStarted():
                self.voice.started()
            case AgentSpeakingStopped():
                self.voice.finished()
            case Transcript():
                self._transcript(ev)
            case TurnMark(stage="no_answer"):
                if self.session.conversation is ConversationState.PROCESSING:
                    self._set_state(ConversationState.LISTENING)
            case TurnMark(stage=stage, at=at):
                self._timing.mark(stage, at)
            case CallerFinished():
                self._caller_finished()
            case EarlyAnswer(used=used):
                if used:
                    self.counters.early_answers_used += 1
                else:
                    self.counters.early_answers_dropped += 1
            case CallerInterrupted():
                if self.agent_is_speaking:
                    self.barge_in(forced=False)
            case TurnFailed(reason=reason, busy=busy):
                self._on_turn_failed(reason, busy)
            case _:
                assert_never(ev)

    def _transcript(self, ev: Transcript) -> None:
        s = self.session
        by = self.operator_lines.pop(ev.text.strip(), "") if ev.role == "agent" and ev.final else ""
        self.store.add_transcript(s, TranscriptTurn(ev.role, ev.text, ev.final, self._clock.now(), by=by))
        if ev.role == "caller" and ev.final:
            self._on_caller_words(" ".join(t.text for t in s.transcript if t.role == "caller"))

    def _caller_finished(self) -> None:
        """The provider read the caller's words as complete at a pause (providers.base.CallerFinished):
        the turn ends now instead of after the VAD's hangover (the provider has checked that the
        caller has not spoken since). Only a turn still open is ended."""
        if not self.vad.speaking:
            return
        self.counters.early_ends += 1
        self.vad.reset()
        self._speech_ended(fallback=False)

    # ---- caller audio (hot path: 50 frames/s per call)
    def on_caller_pcm8(self, pcm8: bytes, lost: int = 0) -> None:
        """One packet of the caller's audio; ``lost``: packets missing before it."""
        if self.taps:
            self.taps("caller", pcm8, RATE)
        if self.held:
            if self.recording is not None:
                self.recording.caller(pcm8)
            return
        for frame in packet_frames(pcm8):
            self._frame(frame, lost)
            lost = 0

    def _frame(self, frame: bytes, lost: int) -> None:
        voice = self.session.voice
        self._last_frame_at = self._clock.now()
        if self.reference.active:
            # File mode: the bridge mixes the agent's own playback into this stream; take it out
            # so that only the caller is left.
            frame = self.reference.residual(frame, lost)
        if self.recording is not None:  # the caller alone: in file mode, the agent's echo taken out
            self.recording.caller(frame)
        if self.half_duplex and not self.session.capture_enabled:
            # The agent is speaking: listen only for the caller talking over it.
            level = self.vad.level_dbfs = voice.level_dbfs = rms_dbfs(frame)
            voice.levels.append(level)
            voiced, barged = self._barge.hear(frame, level)
            if barged:
                self.barge_in(forced=False)
            elif self.continuous_input:
                # Such a provider finds barge-ins itself: it hears what may be the caller talking
                # over the agent (the agent's own voice taken out), and silence otherwise.
                if voiced:
                    self._deliver(frame, level)
                else:
                    self._deliver(SILENT_PCM_FRAME, SILENCE_DBFS)
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
        if self._timing.speech_ended(fallback, self._last_voice_at):
            self._last_voice_at = None  # a later turn counts from its own voice (a fallback flush may have none)
        self.provider_call.utterance_ended(fallback)
        if not fallback and self.half_duplex:
            self._set_state(ConversationState.PROCESSING)
        elif self.session.conversation is ConversationState.USER_SPEAKING:
            self._set_state(ConversationState.LISTENING)

    def _set_continuous(self, on: bool) -> None:
        self.continuous_input = on
        self._silence_fill.enable(on)

    def replace_provider(self, provider_call: ProviderCall, half_duplex: bool, continuous_input: bool) -> None:
        """Another provider takes the call over from here on."""
        self.provider_call = provider_call
        self.half_duplex = half_duplex
        self._set_continuous(continuous_input)
        if self.session.conversation is ConversationState.PROCESSING:
            self._set_state(ConversationState.LISTENING)

    # ---- the agent's audio (the downstream's news, the call's actions)
    @property
    def agent_is_speaking(self) -> bool:
        return self.voice.speaking

    def first_audio_out(self, at: float, handed: float | None = None) -> None:
        """The downstream put agent audio on the line (a frame sent, a playback started);
        ``handed``: when the engine asked for it (a playback's request), if earlier."""
        self._timing.first_audio_out(at, handed, self.provider_call.work)

    def tokens_changed(self) -> None:
        if self.half_duplex:  # a full-duplex provider hears the caller all along
            self.voice.tokens_changed()

    def hold(self) -> float | None:
        """An action begins: stop listening to the caller and stop what the agent is saying, so
        that the action's own line comes next. Returns how much of the interrupted answer was
        heard (None if the agent was not speaking), for the provider's history."""
        self._on_hold()
        self.held = True
        self._barge.run.clear()
        self.vad.reset()
        self.session.voice.speaking = False
        played = self.voice.stop()
        self._set_state(ConversationState.LISTENING)
        return played

    def barge_in(self, forced: bool) -> None:
        """Stop the agent now: its playback, its queued audio, the answer being generated."""
        s = self.session
        heard = self._barge.take()  # the stop below drops what a pause held
        onset = None if forced else self._clock.now() - len(heard) * FRAME_S
        s.barge_ins += 1
        if len(s.barge_in_at) < HISTORY_MAX_EVENTS:
            s.barge_in_at.append(self._clock.now())
        self.counters.barge_ins += 1
        if forced:
            self.counters.barge_ins_forced += 1
        played = self.voice.stop()
        self._spawn(self.provider_call.cancel_response(played))
        self.voice.cancel_tail()
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

    # ---- the operator in the loop
    def take_over(self) -> float | None:
        """An operator takes the call: the agent stops at once (as a forced barge-in stops it, but
        nothing is counted as one), the caller is still heard and transcribed, and the state is
        OPERATOR until ``hand_back``. Returns how much of the interrupted answer was heard."""
        self._barge.take()  # a pause held on caller sound ends with the stop
        played = self.voice.stop()
        self.voice.cancel_tail()
        self._set_capture(True)
        self._set_state(ConversationState.OPERATOR)
        self.operator = True
        return played

    def hand_back(self) -> None:
        """The agent has the call again: its next turn starts afresh (the caller's turns meanwhile
        were the operator's: none is timed as the agent's)."""
        self.operator = False
        self._timing.forget()
        self._set_state(ConversationState.USER_SPEAKING if self.vad.speaking else ConversationState.LISTENING)

    def note(self, text: str, by: str) -> None:
        """A line in the live transcript that nobody said: an operator's instruction or take-over."""
        self.store.add_transcript(self.session, TranscriptTurn("note", text, True, self._clock.now(), by=by))

    # ---- state
    def _set_capture(self, enabled: bool) -> None:
        self.session.capture_enabled = enabled
        self._publish()

    def _set_state(self, state: ConversationState) -> None:
        s = self.session
        if s.conversation is state or self.operator:
            return  # while an operator has the call its state stays OPERATOR
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
        if self._gap_timer is not None:
            self._gap_timer.cancel()
        self._silence_fill.close()
        self._barge.close()
        self.voice.close()
