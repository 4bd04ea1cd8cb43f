"""The conversation's decisions frame by frame on a manual clock: utterance start and end, the
packets-stopped gap, the fallback flush, gating and its tail, barge-in and its reaction time, turn
latency. No sockets, no sleeping: the clock moves 20 ms per frame because the test moves it."""

from __future__ import annotations

from typing import Any, Coroutine

import pytest

from engine.clock import ManualClock
from engine.config import load_config
from engine.conversation import ConversationCoordinator, ConversationCounters
from engine.playback import Downstream
from engine.sessions import BargeIn, CallSession, ConversationState, PlaybackRef, SessionStore, TurnCompleted
from media.audio import rms_dbfs, ulaw_to_pcm16
from media.frames import FRAME_S, PCM_FRAME_BYTES
from media.vad import VoiceActivity
from pbxsim.media import load_wav_ulaw
from providers.base import ProviderCall
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

    mode = "stream"

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
        self.latencies: list[float] = []
        self.spawned: list[Coroutine[Any, Any, Any]] = []
        self.counters = ConversationCounters()
        self.conv = ConversationCoordinator(
            cfg, self.session, self.store, self.provider, True, False, self.counters, self.latencies.append,
            self.spawn, self.clock,
        )
        self.down = TokenDownstream(self.session)
        self.down.on_tokens_changed = self.conv.tokens_changed
        self.conv.downstream = self.down

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


def test_a_caller_the_provider_reads_as_finished_ends_the_turn_before_the_hangover():
    """CallerFinished (a pipeline's complete transcript at the caller's pause) ends the open turn at
    once; it does nothing when no turn is open (the hangover got there first, or the caller has not
    started)."""
    rig = Rig()
    rig.conv.caller_finished()
    assert rig.provider.events == [] and rig.counters.early_ends == 0
    rig.feed(speech_frames())
    rig.feed([SILENCE] * 10)  # 200 ms: well inside the 500 ms hangover
    assert rig.provider.events == ["started"]
    rig.conv.caller_finished()
    assert rig.provider.events == ["started", "ended"] and rig.counters.early_ends == 1
    assert rig.session.conversation is ConversationState.PROCESSING
    rig.feed([SILENCE] * 40)  # the hangover does not end it a second time
    rig.conv.caller_finished()
    assert rig.provider.events == ["started", "ended"] and rig.counters.early_ends == 1


def test_audio_without_speech_is_handed_over_at_the_fallback_interval():
    rig = Rig(vad={"fallback_interval_ms": 1000})
    rig.feed([SILENCE] * 49)
    assert rig.provider.events == []
    rig.feed([SILENCE])
    assert rig.provider.events == ["fallback"] and rig.counters.fallback_flushes == 1


def test_capture_is_gated_while_the_agent_speaks_and_reopens_after_the_tail():
    rig = Rig(playback={"gating_tail_ms": 60}, barge_in={"enabled": False})
    rig.conv.agent_started()
    rig.conv.agent_audio(bytes(640), 16000)
    assert not rig.session.capture_enabled
    before = len(rig.provider.frames)
    rig.feed(speech_frames()[:50])  # the caller talks; barge-in is off
    assert len(rig.provider.frames) == before  # half duplex: nothing reaches the provider
    rig.conv.agent_finished()
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
    rig.conv.agent_started()
    rig.conv.agent_audio(bytes(640), 16000)
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
    rig.conv.agent_started()
    rig.conv.agent_audio(bytes(640), 16000)
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
    rig.conv.agent_started()
    rig.conv.agent_audio(bytes(640), 16000)  # pauses None: file mode
    rig.feed(voiced_run(rig, 4) + [SILENCE])
    assert rig.counters.barge_in_pauses == 0 and rig.counters.false_pauses == 0


def test_turn_latency_is_speech_end_to_first_agent_audio():
    rig = Rig()
    rig.feed(speech_frames())
    while rig.provider.events[-1] != "ended":
        rig.feed([SILENCE])
    speech_end = rig.clock.now()
    rig.clock.advance(0.37)
    rig.conv.first_audio_out(rig.clock.now())
    assert rig.latencies == [pytest.approx(0.37)]
    (done,) = rig.published(TurnCompleted)
    assert done.turn.speech_end == speech_end
