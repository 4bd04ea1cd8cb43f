"""The conversation's decisions frame by frame on a manual clock: utterance start and end, the
packets-stopped gap, the fallback flush, gating and its tail, barge-in and its reaction time, turn
latency. No sockets, no sleeping: the clock moves 20 ms per frame because the test moves it."""

from __future__ import annotations

from typing import Any, Coroutine, NoReturn

import pytest
from prometheus_client import generate_latest

from runtime.clock import ManualClock
from engine.config import load_config
from engine.conversation import ConversationCoordinator
from engine.status import ConversationCounters
from engine.history import record_of
from engine.metrics import EngineMetrics
from engine.playback import Downstream
from engine.sessions import BargeIn, CallSession, ConversationState, PlaybackRef, SessionStore, TurnCompleted, TurnTimeline
from media.audio import rms_dbfs, ulaw_to_pcm16
from media.frames import FRAME_S, PCM_FRAME_BYTES
from media.vad import VoiceActivity
from pbxsim.media import load_wav_ulaw
from providers.base import AgentAudio, AgentSpeakingStarted, AgentSpeakingStopped, CallerFinished, ModelWork, ProviderCall
from tests.conftest import HELLO

SILENCE = bytes(PCM_FRAME_BYTES)


def speech_frames() -> list[bytes]:
    pcm = ulaw_to_pcm16(load_wav_ulaw(HELLO))
    return [pcm[i : i + PCM_FRAME_BYTES] for i in range(0, len(pcm) - PCM_FRAME_BYTES + 1, PCM_FRAME_BYTES)]


def voiced(vad: VoiceActivity, frame: bytes, min_level: float) -> bool:
    level = rms_dbfs(frame)
    return level >= min_level and vad.is_voiced(frame, level)


class RecordingProviderCall(ProviderCall):
    def __init__(self) -> None:
        self.frames: list[float] = []  # level of each frame received
        self.events: list[str] = []

    async def start(self) -> None:
        pass

    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        self.frames.append(level_dbfs)

    def utterance_started(self) -> None:
        self.events.append("started")

    def utterance_ended(self, fallback: bool) -> None:
        self.events.append("fallback" if fallback else "ended")

    async def cancel_response(self, played_s: float | None = None) -> None:
        self.events.append("cancelled")

    async def stop(self) -> None:
        pass


class TokenDownstream(Downstream):
    """Holds one gating token while agent audio is queued, as the real playbacks do."""

    def __init__(self, session: CallSession) -> None:
        self.session = session
        self.added = 0
        self.stopped = 0
        self.on_tokens_changed = lambda: None

    def add(self, pcm16: bytes, sample_rate: int) -> None:
        self.added += len(pcm16)
        if "agent" not in self.session.playbacks:
            self.session.playbacks["agent"] = PlaybackRef("agent", "", 1.0)
            self.on_tokens_changed()

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drained(self) -> None:
        self.session.playbacks.pop("agent", None)
        self.on_tokens_changed()

    def stop(self) -> int:
        self.stopped += 1
        self.drained()
        return 1

    pauses: list[bool] | None = None  # None: a path that cannot pause (file mode)

    def pause(self, paused: bool) -> bool:
        if self.pauses is None:
            return False
        self.pauses.append(paused)
        return True


class Rig:
    def __init__(self, **config: Any) -> None:
        cfg = load_config(None, env={})
        for section, values in config.items():
            for k, v in values.items():
                setattr(getattr(cfg, section), k, v)
        self.cfg = cfg
        self.clock = ManualClock()
        self.session = CallSession(call_id="c1", caller_channel_id="c1")
        self.store = SessionStore()
        self.store.add(self.session)
        self.events = self.store.subscribe()
        self.provider = RecordingProviderCall()
        self.observed: list[TurnTimeline] = []  # the answered turns the metrics were told of
        self.metrics = EngineMetrics(_no_status)
        self.spawned: list[Coroutine[Any, Any, Any]] = []
        self.counters = ConversationCounters()
        self.conv = ConversationCoordinator(
            vad=cfg.vad, barge_in=cfg.barge_in, playback=cfg.playback, session=self.session, store=self.store,
            provider_call=self.provider, half_duplex=True, continuous_input=False, counters=self.counters,
            observe_turn=self._observe, spawn=self.spawn, clock=self.clock,
        )
        self.down = TokenDownstream(self.session)
        self.down.on_tokens_changed = self.conv.tokens_changed
        self.conv.voice.downstream = self.down

    def _observe(self, t: TurnTimeline) -> None:
        self.observed.append(t)
        self.metrics.observe_turn(t)

    def turn_metrics(self) -> str:
        """The turn histograms as /metrics has them (the scrape-time collector, which needs a whole
        engine's status, left out)."""
        names = [f"{m}{suffix}" for m in ("ai_agent_turn_latency_seconds", "ai_agent_turn_end_of_speech_wait_seconds") for suffix in ("_bucket", "_count", "_sum")]
        return generate_latest(self.metrics.registry.restricted_registry(names)).decode()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.spawned.append(coro)
        try:
            coro.send(None)  # the fake's coroutines finish in one step
        except StopIteration:
            pass

    def feed(self, frames: list[bytes]) -> None:
        for f in frames:
            self.clock.advance(FRAME_S)
            self.conv.on_caller_pcm8(f)

    def published(self, kind: type) -> list[Any]:
        out = []
        while (ev := self.events.get_nowait()) is not None:
            if isinstance(ev, kind):
                out.append(ev)
        return out


def _no_status() -> NoReturn:
    raise AssertionError("the engine's status is not part of these tests")


def _sample(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_an_utterance_starts_on_speech_and_ends_after_the_hangover():
    rig = Rig()
    speech = speech_frames()
    rig.feed([SILENCE] * 10)
    assert rig.provider.events == []
    rig.feed(speech)
    assert rig.provider.events == ["started"]
    assert rig.session.conversation is ConversationState.USER_SPEAKING
    ended_at = None
    for i in range(40):  # 800 ms of silence; the hangover is 500 ms
        rig.feed([SILENCE])
        if rig.provider.events[-1] == "ended" and ended_at is None:
            ended_at = i + 1
    assert rig.provider.events == ["started", "ended"]
    tail = next(i for i, f in enumerate(reversed(speech)) if voiced(rig.conv.vad, f, -50.0))
    assert ended_at + tail == 25  # exactly end_ms of unvoiced frames after the last voiced one
    assert rig.session.conversation is ConversationState.PROCESSING  # half duplex: the agent's turn
    assert len(rig.provider.frames) == 10 + len(speech) + 40  # every frame went to the provider


def test_packets_that_stop_mid_speech_end_the_utterance_on_the_clock():
    """A two-party bridge sends nothing while the caller is silent: no frame carries the end."""
    rig = Rig()
    rig.feed(speech_frames()[:30])
    assert rig.provider.events == ["started"]
    rig.clock.advance(0.45)
    assert rig.provider.events == ["started"]  # not yet end_ms without a frame
    rig.clock.advance(0.1)
    assert rig.provider.events == ["started", "ended"]


def test_a_phone_that_sends_some_silence_then_stops_ends_the_turn_end_ms_after_the_voice():
    """A DTX phone sends a few silent frames after its user stops, then nothing: the silence it did
    not send counts too, so the turn ends end_ms after the last voiced frame (measured on a real
    Asterisk: ending it end_ms after the last packet added the trailing silence to every turn)."""
    rig = Rig()
    speech = [f for f in speech_frames() if voiced(rig.conv.vad, f, -50.0)][:30]
    rig.feed(speech)
    last_voice = rig.clock.now()
    rig.feed([SILENCE] * 10)  # 200 ms of the phone's own silence, then it stops sending
    assert rig.provider.events == ["started"]
    ended = None
    for _ in range(40):
        rig.clock.advance(0.01)
        if rig.provider.events[-1] == "ended":
            ended = rig.clock.now()
            break
    assert ended is not None and 0.5 <= ended - last_voice < 0.52, ended - last_voice


def test_a_caller_the_provider_reads_as_finished_ends_the_turn_before_the_hangover():
    """CallerFinished (a pipeline's complete transcript at the caller's pause) ends the open turn at
    once; it does nothing when no turn is open (the hangover got there first, or the caller has not
    started)."""
    rig = Rig()
    rig.conv.on_provider_event(CallerFinished())
    assert rig.provider.events == [] and rig.counters.early_ends == 0
    rig.feed(speech_frames())
    rig.feed([SILENCE] * 10)  # 200 ms: well inside the 500 ms hangover
    assert rig.provider.events == ["started"]
    rig.conv.on_provider_event(CallerFinished())
    assert rig.provider.events == ["started", "ended"] and rig.counters.early_ends == 1
    assert rig.session.conversation is ConversationState.PROCESSING
    rig.feed([SILENCE] * 40)  # the hangover does not end it a second time
    rig.conv.on_provider_event(CallerFinished())
    assert rig.provider.events == ["started", "ended"] and rig.counters.early_ends == 1


def test_audio_without_speech_is_handed_over_at_the_fallback_interval():
    rig = Rig(vad={"fallback_interval_ms": 1000})
    rig.feed([SILENCE] * 49)
    assert rig.provider.events == []
    rig.feed([SILENCE])
    assert rig.provider.events == ["fallback"] and rig.counters.fallback_flushes == 1


def test_capture_is_gated_while_the_agent_speaks_and_reopens_after_the_tail():
    rig = Rig(playback={"gating_tail_ms": 60}, barge_in={"enabled": False})
    rig.conv.on_provider_event(AgentSpeakingStarted())
    rig.conv.on_provider_event(AgentAudio(bytes(640), 16000))
    assert not rig.session.capture_enabled
    before = len(rig.provider.frames)
    rig.feed(speech_frames()[:50])  # the caller talks; barge-in is off
    assert len(rig.provider.frames) == before  # half duplex: nothing reaches the provider
    rig.conv.on_provider_event(AgentSpeakingStopped())
    rig.down.drained()
    rig.clock.advance(0.05)
    assert not rig.session.capture_enabled  # still in the tail
    rig.clock.advance(0.02)
    assert rig.session.capture_enabled


def test_barge_in_stops_the_agent_after_min_ms_of_speech_and_keeps_the_words():
    rig = Rig(barge_in={"min_ms": 100})
    speech = speech_frames()
    # Where the first run of 5 frames loud enough to barge in ends.
    ok = [voiced(rig.conv.vad, f, -40.0) for f in speech]
    run_end = next(i + 1 for i in range(4, len(ok)) if all(ok[i - 4 : i + 1]))
    rig.conv.on_provider_event(AgentSpeakingStarted())
    rig.conv.on_provider_event(AgentAudio(bytes(640), 16000))
    rig.published(BargeIn)
    frames_before = len(rig.provider.frames)
    n = 0
    while rig.down.stopped == 0 and n < len(speech):
        rig.feed([speech[n]])
        n += 1
    assert rig.down.stopped == 1 and "cancelled" in rig.provider.events
    (event,) = rig.published(BargeIn)
    # Reaction is measured from the first voiced frame of the run: 5 frames of 20 ms.
    assert event.reaction_s == pytest.approx(0.1)
    assert n == run_end
    assert rig.session.capture_enabled and rig.provider.events[-1] == "started"
    assert len(rig.provider.frames) == frames_before + 5  # the heard frames start the next utterance


def talking_agent(rig: Rig) -> list[bool]:
    rig.down.pauses = []
    rig.conv.on_provider_event(AgentSpeakingStarted())
    rig.conv.on_provider_event(AgentAudio(bytes(640), 16000))
    return rig.down.pauses


def voiced_run(rig: Rig, n: int) -> list[bytes]:
    """The first ``n`` frames of speech that are all loud and voiced enough to count."""
    speech = speech_frames()
    ok = [voiced(rig.conv.vad, f, -40.0) for f in speech]
    start = next(i for i in range(len(ok)) if all(ok[i : i + n]))
    return speech[start : start + n]


def test_the_agent_pauses_on_the_first_voiced_frames_and_the_barge_in_confirms():
    rig = Rig()  # pause after 40 ms, barge-in after 200 ms
    pauses = talking_agent(rig)
    run = voiced_run(rig, 10)
    rig.feed(run[:1])
    assert pauses == []
    rig.feed(run[1:2])
    assert pauses == [True]  # the caller hears the agent stop now, 160 ms before the barge-in
    rig.feed(run[2:])
    assert rig.down.stopped == 1 and pauses == [True]  # held audio dropped, never resumed
    assert (rig.counters.barge_in_pauses, rig.counters.false_pauses, rig.counters.barge_ins) == (1, 0, 1)


def test_a_short_sound_pauses_the_agent_which_then_goes_on():
    rig = Rig()
    pauses = talking_agent(rig)
    rig.feed(voiced_run(rig, 4) + [SILENCE])  # a cough: 80 ms, then quiet
    assert pauses == [True, False] and rig.down.stopped == 0
    assert (rig.counters.barge_in_pauses, rig.counters.false_pauses, rig.counters.barge_ins) == (1, 1, 0)
    assert not rig.published(BargeIn) and "cancelled" not in rig.provider.events


def test_a_pause_ends_when_the_caller_sends_nothing_more():
    """DTX: the phone stops sending once its user is quiet; no quiet frame ends the run."""
    rig = Rig()
    pauses = talking_agent(rig)
    rig.feed(voiced_run(rig, 3))
    assert pauses == [True]
    rig.clock.advance(0.3)
    assert pauses == [True, False] and rig.counters.false_pauses == 1 and rig.down.stopped == 0


def test_no_pause_where_the_path_cannot_hold_audio_or_when_disabled():
    rig = Rig(barge_in={"pause_ms": 0})
    pauses = talking_agent(rig)
    rig.feed(voiced_run(rig, 4) + [SILENCE])
    assert pauses == [] and rig.counters.barge_in_pauses == 0
    rig = Rig()
    rig.conv.on_provider_event(AgentSpeakingStarted())
    rig.conv.on_provider_event(AgentAudio(bytes(640), 16000))  # pauses None: file mode
    rig.feed(voiced_run(rig, 4) + [SILENCE])
    assert rig.counters.barge_in_pauses == 0 and rig.counters.false_pauses == 0


def speak(rig: Rig, frames: list[bytes]) -> float | None:
    """Feeds the frames; returns when the last one the VAD heard as voice arrived."""
    last = None
    for f in frames:
        rig.feed([f])
        if rig.conv.vad.voiced:
            last = rig.clock.now()
    return last


def test_turn_latency_counts_from_the_callers_last_voiced_frame_and_shows_the_wait_as_its_own_part():
    """The caller's last voiced frame came 500 ms (vad.end_ms) before the VAD decided the turn had
    ended, and the first agent audio went out 370 ms after that decision: the turn took 870 ms for
    the caller. The timeline, the history record and /metrics all say 870 ms, with the 500 ms wait as
    a part of its own; the engine's own share still starts at the decision (the wait is the VAD's,
    not the engine's work)."""
    rig = Rig()
    work = rig.provider.work = ModelWork()
    last_voiced = speak(rig, speech_frames())
    assert last_voiced is not None
    while rig.provider.events[-1] != "ended":
        rig.feed([SILENCE])
    speech_end = rig.clock.now()
    assert speech_end - last_voiced == pytest.approx(0.5)
    # A model ran from before the decision (a partial transcription during the hangover) to 200 ms
    # after it, then a job waited 100 ms for a model busy with another call.
    work.running(last_voiced + 0.1).end = speech_end + 0.2
    work.waited(speech_end + 0.2, speech_end + 0.3)
    rig.clock.advance(0.37)
    rig.conv.first_audio_out(rig.clock.now())

    (done,) = rig.published(TurnCompleted)
    t = done.turn
    assert (t.last_voice_in, t.speech_end) == (last_voiced, speech_end)
    assert t.latency_s == pytest.approx(0.87) and t.endpoint_s == pytest.approx(0.5)
    assert t.in_models_s == pytest.approx(0.2) and t.queued_s == pytest.approx(0.1)
    assert t.own_s == pytest.approx(0.07)  # 370 ms from the decision, less 200 in a model and 100 queued
    assert rig.session.snapshot().conversation.last_turn_latency_s == pytest.approx(0.87)

    rec = record_of(rig.session, "test", ["local"], now_mono=rig.clock.now())
    (turn,) = rec.turns
    assert turn.latency_s == pytest.approx(0.87) and turn.endpoint_s == pytest.approx(0.5) and turn.own_s == pytest.approx(0.07)
    wall = rig.session.created_at - rig.session.created_mono
    assert turn.at == pytest.approx(wall + last_voiced, abs=1e-3)  # the end of the caller's speech

    text = rig.turn_metrics()
    assert rig.observed == [t]
    assert _sample(text, "ai_agent_turn_latency_seconds_count") == 1 and _sample(text, "ai_agent_turn_latency_seconds_sum") == pytest.approx(0.87)
    assert _sample(text, "ai_agent_turn_end_of_speech_wait_seconds_count") == 1
    assert _sample(text, "ai_agent_turn_end_of_speech_wait_seconds_sum") == pytest.approx(0.5)
    assert 'ai_agent_turn_latency_seconds_bucket{le="0.75"} 0.0' in text and 'ai_agent_turn_latency_seconds_bucket{le="1.0"} 1.0' in text


def test_a_turn_whose_packets_stop_counts_from_the_last_voiced_frame_and_a_fallback_flush_from_its_decision():
    """Packets that stop (a two-party bridge, an IAX2 trunk): the turn ends on the clock, end_ms
    after the last frame, and counts from the caller's last voiced frame. A turn the fallback timer
    handed over heard no voice of its own: it counts from that flush, with no wait, not from the
    previous turn's voice."""
    rig = Rig(vad={"fallback_interval_ms": 1000})
    for i, frame in enumerate(speech_frames()):
        rig.feed([frame])
        if i >= 30 and rig.conv.vad.voiced:
            break  # the packets stop on a voiced frame
    last_voiced = rig.clock.now()
    assert rig.conv.vad.speaking and rig.provider.events == ["started"]
    rig.clock.advance(0.6)
    assert rig.provider.events == ["started", "ended"]
    rig.conv.first_audio_out(last_voiced + 0.7)  # 200 ms after the turn ended on the clock
    (t,) = rig.observed
    assert t.last_voice_in == last_voiced and t.speech_end == pytest.approx(last_voiced + 0.5)
    assert t.latency_s == pytest.approx(0.7) and t.endpoint_s == pytest.approx(0.5)

    rig.feed([SILENCE] * 50)  # the caller is quiet: the fallback timer hands the audio over
    assert rig.provider.events[-1] == "fallback"
    flushed = rig.clock.now()
    rig.clock.advance(0.3)
    rig.conv.first_audio_out(rig.clock.now())
    t = rig.observed[-1]
    assert t.speech_end == flushed and t.last_voice_in is None and t.endpoint_s is None
    assert t.latency_s == pytest.approx(0.3)
    text = rig.turn_metrics()
    assert _sample(text, "ai_agent_turn_latency_seconds_count") == 2 and _sample(text, "ai_agent_turn_end_of_speech_wait_seconds_count") == 1
    (_, rec) = record_of(rig.session, "test", ["local"], now_mono=rig.clock.now()).turns
    assert rec.latency_s == pytest.approx(0.3) and rec.endpoint_s is None
