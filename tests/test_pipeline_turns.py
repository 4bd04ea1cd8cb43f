"""The pipeline's turn decisions frame by frame on a manual clock, with scripted stages: the pause
that starts a transcript, a complete transcript that ends the caller's turn once they stay quiet,
the answer begun at the pause and dropped or taken over. No models, no sleeping: time moves 20 ms
per frame because the test moves it (the awaits only let the loop run the call's tasks)."""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Callable, Sequence, TypeVar

import pytest

from providers.base import (
    AgentAudio,
    CallContext,
    CallerFinished,
    EarlyAnswer,
    ComponentStatus,
    ProviderEvent,
    Transcript,
    TurnMark,
)
from providers.config import LocalProviderConfig
from providers.pipeline import Pipeline, PipelineCall, _Voice
from providers.profile import AgentProfile
from providers.stages import LanguageModel, Message, Priority, Reply, Speech, SpeechToText, TextToSpeech, Tool
from providers.turns import PAUSE_S
from runtime.clock import ManualClock

E = TypeVar("E")
FRAME_S = 0.02
LOUD, QUIET = -20.0, -80.0


def frame(level: float) -> bytes:
    """20 ms of 16 kHz PCM16: a tone for a voiced frame, silence for a quiet one."""
    amp = 8000 if level > -45 else 0
    return b"".join(struct.pack("<h", int(amp * math.sin(2 * math.pi * 300 * i / 16000))) for i in range(320))


VOICED, SILENT = frame(LOUD), frame(QUIET)


class ScriptedStt(SpeechToText):
    name = "stt"

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.jobs: list[Priority] = []

    def status(self) -> ComponentStatus:
        return ComponentStatus("stt", "running")

    async def transcribe(self, pcm16: bytes, prompt: str, priority: Priority = Priority.NOW) -> str:
        self.jobs.append(priority)
        return self.texts.pop(0)


class ScriptedLlm(LanguageModel):
    name = "llm"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[str] = []  # the caller's words each generation answers
        self.go = asyncio.Event()  # cleared: the answer waits (a slow model)
        self.go.set()

    def status(self) -> ComponentStatus:
        return ComponentStatus("llm", "running")

    async def generate(
        self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None], tools: Sequence[Tool] = ()
    ) -> Reply:
        self.prompts.append(messages[-1]["content"])
        await self.go.wait()
        on_text(self.reply)
        return Reply(self.reply)


class ScriptedTts(TextToSpeech):
    name = "tts"

    def status(self) -> ComponentStatus:
        return ComponentStatus("tts", "running")

    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        return Speech(bytes(640), 16000)


class Rig:
    def __init__(self, stt: Sequence[str], reply: str = "We open at nine.", profile: AgentProfile | None = None, **cfg: object) -> None:
        self.clock = ManualClock()
        self.events: list[ProviderEvent] = []
        self.stt = ScriptedStt(stt)
        self.llm = ScriptedLlm(reply)
        config = LocalProviderConfig(**{"hold_after_ms": 0, **cfg})
        ctx = CallContext("c1", profile=profile or AgentProfile(greeting="", facts="We open at nine."), clock=self.clock)
        self.call = PipelineCall(ctx, self.events.append, Pipeline(self.stt, self.llm, _Voice(ScriptedTts(), 8)), config)

    async def run(self) -> None:
        """Lets the call's tasks run as far as they can without time passing."""
        for _ in range(20):
            await asyncio.sleep(0)

    async def frames(self, level: float, n: int) -> None:
        for _ in range(n):
            self.call.send_audio(VOICED if level == LOUD else SILENT, level)
            self.clock.advance(FRAME_S)
            await self.run()

    async def wait(self, seconds: float) -> None:
        """No frames at all (a phone with DTX sends nothing while its user is quiet)."""
        self.clock.advance(seconds)
        await self.run()

    def seen(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


async def test_the_pause_starts_a_transcript_at_once_priority_and_not_before() -> None:
    rig = Rig(["I would like"])
    rig.call.utterance_started()
    await rig.frames(LOUD, 10)
    await rig.frames(QUIET, round(PAUSE_S / FRAME_S) - 1)
    assert rig.stt.jobs == []  # 180 ms of quiet: a comma, not yet a pause
    await rig.frames(QUIET, 2)
    assert rig.stt.jobs == [Priority.NOW]
    assert [e.text for e in rig.seen(Transcript)] == ["I would like"]
    assert not rig.seen(CallerFinished)
    await rig.call.stop()


async def test_a_pause_is_found_when_frames_stop_too() -> None:
    rig = Rig(["I would like"])
    rig.call.utterance_started()
    await rig.frames(LOUD, 10)  # the clock is 20 ms past the last voiced frame
    await rig.wait(PAUSE_S - 0.03)
    assert rig.stt.jobs == []
    await rig.wait(0.02)
    assert rig.stt.jobs == [Priority.NOW]
    await rig.call.stop()


@pytest.mark.parametrize("text, finished", [("When do you open?", True), ("When do you", False)])
async def test_a_complete_transcript_ends_the_turn_once_the_caller_stays_quiet(text: str, finished: bool) -> None:
    rig = Rig([text], complete_end_ms=500, answer_at_pause=False)
    rig.call.utterance_started()
    await rig.frames(LOUD, 10)
    await rig.wait(PAUSE_S + 0.01)  # quiet 230 ms: transcribed, read complete (or not)
    assert rig.stt.jobs == [Priority.NOW]
    await rig.wait(0.25)
    assert not rig.seen(CallerFinished)  # quiet 480 ms of the 500
    await rig.wait(0.03)
    assert bool(rig.seen(CallerFinished)) is finished
    await rig.call.stop()


async def test_voice_after_the_pause_keeps_the_turn_open() -> None:
    rig = Rig(["When do you open?", "When do you open? And on"], complete_end_ms=500, answer_at_pause=False)
    rig.call.utterance_started()
    await rig.frames(LOUD, 10)
    await rig.wait(PAUSE_S + 0.01)
    await rig.frames(LOUD, 5)  # the caller goes on before the 500 ms
    await rig.wait(0.6)
    assert not rig.seen(CallerFinished)  # the first transcript no longer covers what they said
    assert rig.stt.jobs == [Priority.NOW, Priority.NOW]  # ... and the second pause has its own
    await rig.call.stop()


async def test_the_answer_begun_at_the_pause_is_taken_over_by_the_turn() -> None:
    rig = Rig(["When do you open?"])
    rig.call.utterance_started()
    await rig.frames(LOUD, 15)
    await rig.wait(PAUSE_S + 0.01)
    assert rig.llm.prompts == ["When do you open?"]  # begun at the pause
    rig.call.utterance_ended(fallback=False)  # the engine's VAD ends the turn on the same words
    await rig.run()
    assert rig.stt.jobs == [Priority.NOW]  # the pause's transcript is the turn's: no second pass
    assert rig.llm.prompts == ["When do you open?"]  # and its answer too
    assert rig.seen(EarlyAnswer) == [EarlyAnswer(used=True)]
    assert rig.seen(AgentAudio) and [e.stage for e in rig.seen(TurnMark)][:1] == ["stt_final"]
    await rig.call.stop()


async def test_the_answer_begun_at_the_pause_is_dropped_when_the_caller_goes_on() -> None:
    rig = Rig(["When do you open?", "When do you open? On Sunday?"])
    rig.call.utterance_started()
    await rig.frames(LOUD, 15)
    await rig.wait(PAUSE_S + 0.01)
    await rig.frames(LOUD, 5)
    assert rig.seen(EarlyAnswer) == [EarlyAnswer(used=False)]
    await rig.call.stop()


async def test_a_slow_answer_gets_the_hold_line_when_it_is_due_and_not_before() -> None:
    rig = Rig(["When do you open?"], hold_after_ms=2000)
    rig.call.m.cache.put(rig.call.cfg.hold_line, Speech(bytes(640), 16000), pin=True)
    rig.llm.go.clear()
    rig.call.utterance_started()
    await rig.frames(LOUD, 15)
    rig.call.utterance_ended(fallback=False)
    await rig.run()
    assert rig.llm.prompts == ["When do you open?"]  # the answer is under way, and slow
    await rig.wait(1.99)
    assert "hold" not in [e.stage for e in rig.seen(TurnMark)]
    await rig.wait(0.02)
    assert "hold" in [e.stage for e in rig.seen(TurnMark)]
    assert [e.text for e in rig.seen(Transcript) if e.role == "agent"] == [rig.call.cfg.hold_line]
    rig.llm.go.set()
    await rig.run()
    assert [e.text for e in rig.seen(Transcript) if e.role == "agent"] == [rig.call.cfg.hold_line, "We open at nine."]
    await rig.call.stop()


@pytest.mark.parametrize("ends", ["never", "as_noise"])
async def test_an_answer_ready_while_the_caller_speaks_again_waits_for_them_at_most_4_s(ends: str) -> None:
    rig = Rig(["When do you open?"], stt_at_pause=False)
    rig.llm.go.clear()
    rig.call.utterance_started()
    await rig.frames(LOUD, 15)
    rig.call.utterance_ended(fallback=False)
    await rig.run()
    rig.call.utterance_started()  # the caller speaks again before the answer is ready
    await rig.frames(LOUD, 5)
    rig.llm.go.set()
    await rig.run()
    assert not rig.seen(AgentAudio)  # not over the caller
    if ends == "as_noise":
        rig.call.utterance_ended(fallback=True)  # the engine's VAD found no voice in it: not a turn
        await rig.run()
        assert rig.seen(AgentAudio)
    else:
        await rig.wait(3.9)
        assert not rig.seen(AgentAudio)
        await rig.wait(0.11)
        assert rig.seen(AgentAudio)  # a line whose noise never stops does not silence the agent
    await rig.call.stop()
