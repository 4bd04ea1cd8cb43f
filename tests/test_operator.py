"""The operator in the loop, end to end over the simulator (engine, pbxsim, real RTP and codecs):
a line whispered to the agent reaches the caller in the agent's voice; an instruction changes its
later answers; a take-over silences the agent while the caller is still transcribed and sends the
operator's audio to the caller; a hand-back gives the agent the call again with what was said
meanwhile in its history; and what makes no sense is refused. The pipeline's stages are scripted
(no models): its STT says what the test wants heard, its TTS speaks each kind of line as a tone of
its own, so what the caller hears is told apart by frequency."""

from __future__ import annotations

import asyncio
import io
import random
import time
from typing import Callable, Sequence

import numpy as np
import pytest

from aiagent_tui import history_cli
from engine.engine import Engine
from engine.media import OPERATOR_MAX_FRAMES
from engine.sessions import ActionChanged, ConversationState, TranscriptAdded
from media.audio import ulaw_to_pcm16
from pbxsim.media import load_wav_ulaw
from pbxsim.script import Pause
from providers.base import CallContext, ComponentStatus
from providers.config import IN_PROCESS
from providers.echo import EchoCall
from providers.pipeline import Pipeline, PipelineProvider, _Voice
from providers.profile import AgentProfile, Department
from providers.stages import LanguageModel, Message, Priority, Reply, Speech, SpeechToText, TextToSpeech, Tool
from tests.conftest import HELLO, history_of, running_engine, wait_for
from tests.deepgram_server import API_KEY, Behaviour, FakeDeepgram

ALICE = "alice (local)"
ANSWER_HZ, WHISPER_HZ, OPERATOR_HZ = 500.0, 1000.0, 1500.0
WHISPER = "The doctor is running ten minutes late."


def tone(hz: float, seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16).tobytes()


class Stt(SpeechToText):
    """Each utterance is heard as the next of ``texts``."""

    name = "stt"

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def status(self) -> ComponentStatus:
        return ComponentStatus("stt", "running")

    async def transcribe(self, pcm16: bytes, prompt: str, priority: Priority = Priority.NOW) -> str:
        return self.texts.pop(0) if self.texts else ""


class Llm(LanguageModel):
    """Answers ``answer N``, with the operator's instruction's key word when its system prompt has it;
    keeps every prompt it was given."""

    name = "llm"

    def __init__(self) -> None:
        self.prompts: list[list[Message]] = []

    def status(self) -> ComponentStatus:
        return ComponentStatus("llm", "running")

    async def generate(
        self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None], tools: Sequence[Tool] = ()
    ) -> Reply:
        self.prompts.append(messages)
        reply = f"Answer {len(self.prompts)}." + (" Parking is free." if "parking" in messages[0]["content"] else "")
        on_text(reply)
        return Reply(reply)


class Tts(TextToSpeech):
    """The whispered line as a 1000 Hz tone, everything else as 500 Hz: 0.6 s each."""

    name = "tts"

    def status(self) -> ComponentStatus:
        return ComponentStatus("tts", "running")

    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        return Speech(tone(WHISPER_HZ if "doctor" in text else ANSWER_HZ, 0.6), 16000)


def dominant_hz(ulaw: bytes) -> float:
    pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / 8000)[spectrum.argmax()])


def loud(frames: list[tuple[float, bytes]], since: float) -> list[bytes]:
    """The frames heard since ``since`` (arrival, 8 kHz u-law) with a tone in them."""
    return [p for t, p in frames if t >= since and np.abs(np.frombuffer(ulaw_to_pcm16(p), np.int16)).max() > 1000]


def heard_at(frames: list[tuple[float, bytes]], since: float, hz: float) -> float:
    """Seconds of audio at ``hz`` heard since ``since`` (each 20 ms frame's main tone)."""
    return sum(0.02 for p in loud(frames, since) if abs(dominant_hz(p) - hz) < 60)


def heard(rec, since: float, hz: float) -> float:
    return heard_at(rec.media.agent_frames, since, hz)


def loud_seconds(rec, since: float) -> float:
    return 0.02 * len(loud(rec.media.agent_frames, since))


def configure(cfg) -> None:
    cfg.profiles["default"] = AgentProfile(greeting="Hello, how can I help?", facts="", silence_prompt_s=0)
    local = cfg.providers.local
    local.stt_at_pause = False  # one transcription an utterance: the scripted STT's texts in order
    local.answer_at_pause = False
    local.hold_after_ms = 0


async def scripted(eng: Engine, heard_as: Sequence[str]) -> tuple[Stt, Llm]:
    """New calls get the in-process pipeline with scripted stages (under its own name, which the
    engine's readiness and summary know: an attached console's view asks for them)."""
    stt, llm = Stt(heard_as), Llm()
    provider = PipelineProvider(IN_PROCESS, eng.config.providers, eng.stages)
    provider.models = Pipeline(stt, llm, _Voice(Tts(), 8))
    assert IN_PROCESS not in eng.providers, "the in-process pipeline already loaded: its models would be left running"
    eng.providers[IN_PROCESS] = provider
    await eng.set_default_provider(IN_PROCESS)
    return stt, llm


async def call_in(eng: Engine, pbx, mode: str):
    rec = pbx.place_call(script=[Pause(60.0)])
    await wait_for(lambda: (c := eng.calls.calls.get(rec.id)) is not None and c.provider_call is not None and c.session.bridged_at is not None,
                   what="the call set up")
    # The greeting heard, and the agent listening.
    await wait_for(lambda: rec.media is not None and loud_seconds(rec, 0) >= 0.5 and eng.store.get(rec.id).conversation is ConversationState.LISTENING
                   and not eng.store.get(rec.id).playbacks, what="the greeting played")
    return rec


async def say_hello(rec, eng: Engine, words: str) -> None:
    """The caller speaks; ``words``: what the scripted STT hears, waited for in the transcript."""
    rec.media.say(load_wav_ulaw(HELLO))
    await wait_for(lambda: any(t.role == "caller" and t.text == words for t in eng.store.get(rec.id).transcript), timeout=15,
                   what=f"the caller's {words!r} transcribed")


def engine_for(pbx, tmp_path, mode: str):
    return running_engine(pbx, tmp_path, configure, AIAGENT_PROVIDER="tone", AIAGENT_DOWNSTREAM_MODE=mode)


async def test_a_whispered_line_is_said_in_the_agents_voice_after_its_answer_and_kept_as_the_operators(pbx, tmp_path):
    async with engine_for(pbx, tmp_path, "stream") as eng:
        await scripted(eng, ["What time do you open?"])
        sub = eng.store.subscribe()
        rec = await call_in(eng, pbx, "stream")
        # Whispered while the agent is answering: said after the answer, not over it.
        await say_hello(rec, eng, "What time do you open?")
        await wait_for(lambda: eng.store.get(rec.id).conversation is ConversationState.AGENT_SPEAKING, what="the agent answering")
        since = time.monotonic()
        assert eng.operator_say(rec.id, WHISPER, ALICE)
        await wait_for(lambda: heard(rec, since, WHISPER_HZ) >= 0.5, what="the whispered line heard")
        tones = [round(dominant_hz(p)) for p in loud(rec.media.agent_frames, since)]
        first_whisper = next(i for i, hz in enumerate(tones) if abs(hz - WHISPER_HZ) < 60)
        assert all(abs(hz - WHISPER_HZ) < 60 for hz in tones[first_whisper:]), "the answer went on over the whispered line"
        assert first_whisper > 0, "the answer was cut off by the line"
        s = eng.store.get(rec.id)
        assert (s.transcript[-1].role, s.transcript[-1].text, s.transcript[-1].by) == ("agent", WHISPER, ALICE)
        assert [(a.kind, a.by, a.text, a.state) for a in s.actions] == [("say", ALICE, WHISPER, "done")]
        # The agent's own history has the line as its own.
        assert eng.calls.calls[rec.id].provider_call.history[-1] == {"role": "assistant", "content": WHISPER}
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
        assert [e.action.state for e in events if isinstance(e, ActionChanged)] == ["sent", "done"]
        assert any(isinstance(e, TranscriptAdded) and e.turn.by == ALICE for e in events)
        assert await eng.hangup(rec.id)
        record = await history_of(eng, rec.id)
    line = next(line for line in record.transcript if line.text == WHISPER)
    assert line.role == "agent" and line.by == ALICE
    out = io.StringIO()
    history_cli.show(record, out)
    assert f"{WHISPER}  [operator: {ALICE}]" in out.getvalue()
    assert f"line for the agent {WHISPER!r} by {ALICE}: done" in out.getvalue()


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_take_over_silences_the_agent_sends_the_operator_and_hand_back_resumes_with_the_history(pbx, tmp_path, mode):
    async with engine_for(pbx, tmp_path, mode) as eng:
        _, llm = await scripted(eng, ["Can I move my appointment to Friday?", "So is Friday fine?"])
        rec = await call_in(eng, pbx, mode)
        call = eng.calls.calls[rec.id]
        taps: list[tuple[str, int]] = []
        eng.set_audio_tap(rec.id, lambda source, pcm, rate: taps.append((source, len(pcm))), key="test")
        assert eng.take_over(rec.id, ALICE)
        summary = next(c for c in eng.store.summaries() if c.call_id == rec.id)
        assert (summary.state, summary.operator) == ("operator", ALICE) and summary.operator_since is not None
        assert eng.store.snapshot(rec.id).conversation.operator == ALICE
        # The operator's voice (a 1500 Hz tone from their microphone at 16 kHz) reaches the caller.
        since = time.monotonic()
        await speak(eng, rec.id, tone(OPERATOR_HZ, 1.0), burst_s=0.02)
        await wait_for(lambda: heard(rec, since, OPERATOR_HZ) >= 0.8, what="the operator heard by the caller")
        assert ("operator", 640) in taps  # a listener hears the operator too
        # The caller asks something: transcribed, not answered (the LLM is not even asked).
        prompts = len(llm.prompts)
        await say_hello(rec, eng, "Can I move my appointment to Friday?")
        await wait_for(lambda: call.provider_call._turn_task.done(), what="the caller's turn over")
        assert len(llm.prompts) == prompts
        assert heard(rec, since, ANSWER_HZ) == 0
        assert eng.store.get(rec.id).conversation is ConversationState.OPERATOR
        assert eng.hand_back(rec.id, "bob (attached)")
        assert eng.store.get(rec.id).conversation is ConversationState.LISTENING and eng.store.get(rec.id).operator == ""
        after = time.monotonic()
        eng.operator_audio(rec.id, tone(OPERATOR_HZ, 0.5), 16000)  # handed back: the operator's audio is dropped
        # The agent answers again, its history holding the taken-over part.
        await say_hello(rec, eng, "So is Friday fine?")
        await wait_for(lambda: heard(rec, after, ANSWER_HZ) >= 0.4, what="the agent's answer after the hand-back")
        assert heard(rec, after, OPERATOR_HZ) == 0
        note = llm.prompts[-1][-2]["content"]
        assert llm.prompts[-1][-1]["content"] == "So is Friday fine?"
        assert "human operator" in note and '"Can I move my appointment to Friday?"' in note
        s = eng.store.get(rec.id)
        assert [(a.kind, a.by) for a in s.actions] == [("take_over", ALICE), ("hand_back", "bob (attached)")]
        notes = [(t.text, t.by) for t in s.transcript if t.role == "note"]
        assert notes == [("an operator took the call over", ALICE), ("the operator handed the call back to the agent", "bob (attached)")]
        assert s.barge_ins == 0  # the agent's stop at the take-over is no barge-in
        assert await eng.hangup(rec.id)
        record = await history_of(eng, rec.id)
    assert [(a.kind, a.by) for a in record.actions] == [("take_over", ALICE), ("hand_back", "bob (attached)")]
    out = io.StringIO()
    history_cli.show(record, out)
    assert f"take over by {ALICE}: done" in out.getvalue() and "hand back by bob (attached): done" in out.getvalue()


async def speak(eng: Engine, call_id: str, pcm16: bytes, *, burst_s: float, jitter_s: float = 0.0, seed: int = 5) -> None:
    """The operator's microphone at 16 kHz, in real time: ``burst_s`` of audio at a time, each
    burst up to ``jitter_s`` late (a sound device's blocks over a WebSocket through SSH)."""
    rng = random.Random(seed)
    step = int(16000 * burst_s) * 2
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm16), step)):
        late = rng.uniform(0, jitter_s) if n else 0.0  # the first on time: the others' lateness tells
        await asyncio.sleep(max(0.0, start + n * burst_s + late - time.monotonic()))
        eng.operator_audio(call_id, pcm16[i : i + step], 16000)


async def test_an_operators_bursty_audio_reaches_the_caller_without_gaps_and_is_never_heard_late(pbx, tmp_path):
    """A microphone's 100 ms blocks arriving up to 40 ms late play as one continuous stream (the
    engine holds 60 ms first), counted neither as the agent's audio running dry nor as the
    operator's gaps; an operator sending faster than real time is heard at most 200 ms late (the
    oldest frames dropped), not later and later."""
    async with engine_for(pbx, tmp_path, "stream") as eng:
        await scripted(eng, [])
        rec = await call_in(eng, pbx, "stream")
        call = eng.calls.calls[rec.id]
        out = eng.store.get(rec.id).rtp_out
        assert eng.take_over(rec.id, ALICE)
        since = time.monotonic()
        await speak(eng, rec.id, tone(OPERATOR_HZ, 3.0), burst_s=0.1, jitter_s=0.04)
        await wait_for(lambda: not call.media.out_frames, what="the operator's audio sent")
        await wait_for(lambda: heard(rec, since, OPERATOR_HZ) >= 2.98, what="all of the operator's 3 s heard by the caller")
        assert (out.underruns, out.operator_gaps, out.operator_dropped) == (0, 0, 0)
        # Faster than real time: 2 s at once, then a different tone; the queue stays at 200 ms.
        eng.operator_audio(rec.id, tone(OPERATOR_HZ, 2.0), 16000)
        sent = time.monotonic()
        eng.operator_audio(rec.id, tone(WHISPER_HZ, 0.1), 16000)
        assert len(call.media.out_frames) <= OPERATOR_MAX_FRAMES
        await wait_for(lambda: heard(rec, sent, WHISPER_HZ) >= 0.1, what="the last words heard")
        last_words = next(t for t, p in rec.media.agent_frames if t >= sent and abs(dominant_hz(p) - WHISPER_HZ) < 60)
        assert last_words - sent < 0.5, f"the operator was heard {last_words - sent:.2f} s late"
        assert out.operator_dropped >= 80 and out.overruns == 0
        assert out.underruns == 0  # the operator's pauses are not the agent's audio running dry
        assert eng.hand_back(rec.id, ALICE)
        assert not call.media.operator
        assert await eng.hangup(rec.id)


async def test_an_instruction_changes_the_later_answers_of_this_call_only(pbx, tmp_path):
    async with engine_for(pbx, tmp_path, "stream") as eng:
        _, llm = await scripted(eng, ["Where are you?", "How do I get there?"])
        rec = await call_in(eng, pbx, "stream")
        await say_hello(rec, eng, "Where are you?")
        await wait_for(lambda: any(t.text == "Answer 1." for t in eng.store.get(rec.id).transcript), what="the first answer")
        await wait_for(lambda: eng.store.get(rec.id).conversation is ConversationState.LISTENING, what="the answer played")
        assert eng.operator_instruct(rec.id, "Tell every caller that parking is free.", ALICE)
        await say_hello(rec, eng, "How do I get there?")
        await wait_for(lambda: [t.text for t in eng.store.get(rec.id).transcript][-2:] == ["Answer 2.", "Parking is free."], what="the instructed answer")
        assert "Tell every caller that parking is free." in llm.prompts[-1][0]["content"]
        s = eng.store.get(rec.id)
        assert ("note", "instruction: Tell every caller that parking is free.", ALICE) in [(t.role, t.text, t.by) for t in s.transcript]
        assert [(a.kind, a.text) for a in s.actions] == [("instruct", "Tell every caller that parking is free.")]
        # For this call only: the profile's instructions stay as they were.
        assert "parking" not in eng.config.profiles["default"].instructions()
        assert await eng.hangup(rec.id)


async def test_what_makes_no_sense_is_refused_with_a_line_in_the_log(pbx, tmp_path):
    async with engine_for(pbx, tmp_path, "stream") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(60.0)])  # the tone provider: it speaks no text
        await wait_for(lambda: (c := eng.calls.calls.get(rec.id)) is not None and c.provider_call is not None, what="the call set up")
        assert not eng.hand_back(rec.id, ALICE)
        assert not eng.operator_say(rec.id, "Hello there.", ALICE)
        assert not eng.operator_instruct(rec.id, "Be brief.", ALICE)
        assert not eng.take_over("no-such-call", ALICE)
        assert eng.take_over(rec.id, ALICE)
        assert not eng.take_over(rec.id, "bob (local)")
        assert eng.hand_back(rec.id, ALICE)
        assert not eng.operator_say(rec.id, "   ", ALICE)
        logged = []
        while (e := sub.get_nowait()) is not None:
            logged.append(getattr(e, "message", ""))
        refusals = [m for m in logged if "refused" in m]
        assert refusals == [
            f"hand back by {ALICE} refused: the call is not taken over",
            f"a line for the agent by {ALICE} refused: provider tone cannot speak a given line",
            f"an instruction by {ALICE} refused: provider tone takes no instructions",
            f"take over by {ALICE} refused: no call no-such-call",
            f"take over by bob (local) refused: already taken over by {ALICE}",
            f"a line for the agent by {ALICE} refused: no line given",
        ]
        assert [a.kind for a in eng.store.get(rec.id).actions] == ["take_over", "hand_back"]
        assert await eng.hangup(rec.id)
        await wait_for(lambda: rec.id not in eng.calls.calls, what="the call gone")
        assert not eng.take_over(rec.id, ALICE)
        eng.operator_audio(rec.id, tone(OPERATOR_HZ, 0.1), 16000)  # a call that went: dropped quietly


@pytest.fixture
async def deepgram(monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", API_KEY)
    server = FakeDeepgram(Behaviour(close_after_turns=1))
    await server.start()
    yield server
    await server.stop()


async def test_on_deepgram_an_instruction_updates_the_prompt_a_line_is_queued_and_a_take_over_is_refused(pbx, tmp_path, deepgram):
    def cfg(c) -> None:
        c.providers.deepgram.reconnect_initial_s = 0.1
        c.profiles["default"] = AgentProfile(greeting="Hello, how can I help?", facts="", silence_prompt_s=0)

    async with running_engine(pbx, tmp_path, cfg, AIAGENT_PROVIDER="deepgram", DEEPGRAM_AGENT_URL=deepgram.url, AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(60.0)])
        await wait_for(lambda: rec.media is not None and loud_seconds(rec, 0) >= 0.7 and not eng.store.get(rec.id).playbacks, what="the greeting heard")
        assert eng.operator_instruct(rec.id, "Tell every caller that parking is free.", ALICE)
        await wait_for(lambda: deepgram.seen.prompt_updates, what="UpdatePrompt sent")
        assert "Tell every caller that parking is free." in deepgram.seen.prompt_updates[0]
        since = time.monotonic()
        assert eng.operator_say(rec.id, WHISPER, ALICE)
        await wait_for(lambda: heard(rec, since, 600.0) >= 0.4, what="the line heard (the fake speaks it as a 600 Hz tone)")
        assert deepgram.seen.injected == [WHISPER] and deepgram.seen.injected_behaviour == ["queue"]  # after the agent's answer, not over it
        await wait_for(lambda: eng.store.get(rec.id).transcript[-1].by == ALICE, what="the line in the transcript as the operator's")
        assert not eng.take_over(rec.id, ALICE)
        logged = []
        while (e := sub.get_nowait()) is not None:
            logged.append(getattr(e, "message", ""))
        assert any("take over by alice (local) refused: provider deepgram cannot hold its answers" in m for m in logged)
        # The caller speaks: the fake answers, then drops the session; the next session's Settings keep the instruction.
        rec.media.say(load_wav_ulaw(HELLO))
        await wait_for(lambda: deepgram.seen.connections >= 2 and len(deepgram.seen.settings) >= 2, timeout=20, what="a second session")
        assert "Tell every caller that parking is free." in deepgram.seen.settings[1]["agent"]["think"]["prompt"]
        assert "parking" not in deepgram.seen.settings[0]["agent"]["think"]["prompt"]
        assert await eng.hangup(rec.id)


async def test_a_transfer_while_taken_over_hands_the_call_back_first_and_is_announced(pbx, tmp_path):
    def with_billing(cfg) -> None:
        configure(cfg)
        cfg.profiles["default"].departments["billing"] = Department(description="invoices", context="from-internal", extension="201")

    async with running_engine(pbx, tmp_path, with_billing, AIAGENT_PROVIDER="tone", AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        await scripted(eng, [])
        rec = await call_in(eng, pbx, "stream")
        assert eng.take_over(rec.id, ALICE)
        since = time.monotonic()
        assert eng.transfer(rec.id, "billing")
        await wait_for(lambda: rec.report(pbx)["transferred_to"], until=lambda where: where == "201@from-internal", what="the caller put through")
        assert heard(rec, since, ANSWER_HZ) >= 0.4  # the agent's announcement, in its voice again
        record = await history_of(eng, rec.id, until=lambda r: all(a.state != "sent" for a in r.actions))
    # The transfer asked for, then the hand-back as it begins.
    assert [(a.kind, a.state) for a in record.actions] == [("take_over", "done"), ("transfer", "done"), ("hand_back", "done")]
    assert record.actions[2].by == ALICE and "an action on the call" in record.actions[2].detail


async def test_the_echo_line_test_echoes_nothing_while_taken_over():
    events: list = []
    call = EchoCall(CallContext("c1"), events.append, 0.02)
    assert call.hold_answers(True)
    call.send_audio(tone(400, 0.02), -20.0)
    assert not call._pending  # nothing scheduled: the caller does not hear themselves over the operator
    assert call.hold_answers(False, "a note the echo has no use for")
    call.send_audio(tone(400, 0.02), -20.0)
    await wait_for(lambda: events, what="the echo again after the hand-back")
    await call.stop()
