"""The agent must not hear itself on the real echo path of bridge playbacks.

The simulator returns file playbacks as a real Asterisk 22 bridge does (BEHAVIOUR.md, "The echo of
bridge playbacks": bit-exact, whole-frame delays that grow, sample-continuous queued files, a
saturating sum with the caller; a 16 kHz caller's echo half a frame late and low-passed). A caller
on a DTX, a noisy or a wideband line asks a question in a human
TTS voice and then listens to a long answer (the real local models): no barge-in may fire, the
caller's side of the transcript holds the question only (no agent words heard back as the
caller's), and the whole answer reaches the caller. Before the engine followed the echo with a
continuous, POST-anchored reference, these calls were cut off by their own echo.
"""

from __future__ import annotations

import time

import pytest

from engine.sessions import BargeIn, CallState, CallStateChanged, ConversationChanged, TranscriptAdded
from pbxsim.server import SimPBX
from pbxsim.script import Line, Pause, SayText, WaitAgent, WaitAgentDone
from tests.conftest import running_engine, wait_for
from tests.test_local_provider import wer

QUESTION = "Hello. Can you tell me a story about a lighthouse keeper?"


def storyteller(cfg) -> None:
    cfg.profiles["default"].persona = "You are a storyteller. Always answer with a long story of many sentences."
    cfg.providers.local.llm_max_tokens = 120
    cfg.profiles["default"].greeting = "Hello, thank you for calling. I am the storyteller. What would you like to hear about today?"


@pytest.mark.parametrize(
    "line", [Line(), Line(noise_dbfs=-62.0), Line(noise_dbfs=-62.0, rate=16000)], ids=["dtx-line", "noisy-line", "wideband-noisy-line"],
)
async def test_the_agent_does_not_hear_itself_on_the_real_echo_path(tmp_path, line):
    pbx = SimPBX(seed=11)
    await pbx.start(port=0)
    try:
        async with running_engine(pbx, tmp_path, storyteller, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="file") as eng:
            events = eng.store.subscribe()
            script = [WaitAgentDone(0.8, 30.0), SayText(QUESTION), WaitAgent(2.0, 40.0), WaitAgentDone(1.5, 60.0), Pause(0.5)]
            rec = pbx.place_call(script=script, caller_number="5550100", line=line)
            await wait_for(rec.finished.is_set, timeout=150)
            report = rec.report(pbx)
            barge_ins, caller_words = [], []
            while (ev := events.get_nowait()) is not None:
                if isinstance(ev, BargeIn):
                    barge_ins.append(ev)
                elif isinstance(ev, TranscriptAdded) and ev.turn.role == "caller" and ev.turn.final:
                    caller_words.append(ev.turn.text)
        assert report["bridged"] and report["hangup_clean"]
        assert barge_ins == [], f"the agent's own voice fired {len(barge_ins)} barge-in(s)"
        # The question alone, as Whisper heard this run's voice (it samples: "a like house keeper"
        # is the same question; the agent's words heard back would add a sentence or more).
        assert len(caller_words) == 1 and wer(QUESTION, caller_words[0]) < 0.35, caller_words
        assert report["agent_audio_seconds"] > 6.0  # the greeting (about 5 s) and an answer, not cut off
    finally:
        await pbx.stop()
    assert pbx.violations == []


def strict_vad(cfg) -> None:
    storyteller(cfg)
    cfg.vad.min_level_dbfs = -30.0  # a site that raised the VAD's floor for noisy lines


async def test_sound_the_vad_never_found_voiced_is_not_answered(tmp_path):
    """A voice in the background (about -45 dBFS: below this site's VAD floor, above the loudness
    the provider transcribes) talks on a noisy line while the caller says nothing: the fallback
    flushes hand it to STT, which can read it, but it is not the caller's turn: no caller words,
    no answer. (Before, the fallback's audio went on to the LLM.)"""
    pbx = SimPBX(seed=5)
    await pbx.start(port=0)
    try:
        async with running_engine(pbx, tmp_path, strict_vad, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="file") as eng:
            events = eng.store.subscribe()
            mumble = SayText("Please enter your password, followed by the pound key. Thank you for calling, goodbye.", gain_db=-22.0)
            script = [WaitAgentDone(0.8, 30.0), mumble, mumble, Pause(2.0)]
            rec = pbx.place_call(script=script, caller_number="5550101", line=Line(noise_dbfs=-62.0))
            timeline: list[tuple[float, object]] = []  # what the call went through, for a failure's message
            start = time.monotonic()

            def ended() -> bool:  # each event taken as it comes, timed
                while (ev := events.get_nowait()) is not None:
                    timeline.append((time.monotonic() - start, ev))
                return rec.finished.is_set()

            await wait_for(ended, timeout=150, interval=0.05, what="the call ended")
            ended()
            flushes = eng.calls.conversation_counters.fallback_flushes
            caller_words, agent_words = [], []
            for _, ev in timeline:
                if isinstance(ev, TranscriptAdded) and ev.turn.final:
                    (caller_words if ev.turn.role == "caller" else agent_words).append(ev.turn.text)
        story = "\n".join(f"{t:6.2f} {ev}" for t, ev in timeline)
        assert flushes >= 1, f"no fallback flush; the call:\n{story}"  # the fallback did hand the audio over
        assert caller_words == [], story
        # The greeting, and nothing that answers the mumble (the silence watchdog may ask whether
        # the caller is still there: they said nothing).
        assert "storyteller" in agent_words[0] and set(agent_words[1:]) <= {"Are you still there?"}, story
    finally:
        await pbx.stop()


@pytest.mark.parametrize("mode", ["file", "stream"])
async def test_a_greeting_ready_before_the_bridge_waits_for_it(tmp_path, mode):
    """The PBX is slow to put the ExternalMedia channel in the bridge (addChannel answered after a
    second), so the greeting is ready before it is. Played at once, a file would reach the caller
    but its first frames not the ExternalMedia stream: the echo reference, counted from the POST,
    would be off by as many frames and the greeting's own echo would barge in on it (seen in CI);
    a stream would not reach the caller at all until the bridge. It waits: the caller hears all of
    it, and nothing barges in."""
    pbx = SimPBX(seed=5)
    await pbx.start(port=0)
    pbx.faults.delays["bridges.addChannel"] = 1.0
    try:
        async with running_engine(pbx, tmp_path, storyteller, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
            events = eng.store.subscribe()
            rec = pbx.place_call(script=[WaitAgentDone(1.0, 30.0)], caller_number="5550102", line=Line(noise_dbfs=-62.0))
            await wait_for(rec.finished.is_set, timeout=60)
            report = rec.report(pbx)
            sent_s = eng.rtp.counters.packets_out * 0.02
            order = []
            while (ev := events.get_nowait()) is not None:
                if isinstance(ev, BargeIn):
                    order.append("barge-in")
                elif isinstance(ev, ConversationChanged) and ev.gating and "audio" not in order:
                    order.append("audio")  # the greeting's audio was handed down
                elif isinstance(ev, CallStateChanged) and ev.new is CallState.STREAMING and "bridged" not in order:
                    order.append("bridged")
            files_stopped = eng.calls.playback_counters.files_stopped
        assert order == ["audio", "bridged"], order  # ready first, and no barge-in
        assert report["hangup_clean"]
        assert report["agent_audio_seconds"] > 4.0  # the greeting, about 5 s
        if mode == "file":
            assert files_stopped == 0
        else:
            assert report["agent_audio_seconds"] >= sent_s - 0.02  # every frame sent was heard
    finally:
        await pbx.stop()
    assert pbx.violations == []
