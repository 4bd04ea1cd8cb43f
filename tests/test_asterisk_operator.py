"""The operator in the loop on the real Asterisk 22: an operator takes a call over and the caller
hears the operator's voice (a tone from their "microphone") and not the agent, though what the
caller says is transcribed; handed back, the agent answers again, the taken-over part in its
history; a whispered line is heard in the agent's voice. What the caller hears is taken at the
caller's side and in MixMonitor's recording. The pipeline's stages are tests/test_operator.py's
scripted ones: each kind of audio is a tone of its own."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.sessions import ConversationState
from pbxsim.script import Pause, Say, WaitAgent, WaitAgentDone
from tests.conftest import HELLO, history_of, running_engine, wait_for
from tests.test_operator import ALICE, ANSWER_HZ, OPERATOR_HZ, WHISPER, WHISPER_HZ, configure, heard_at, scripted, tone

pytestmark = pytest.mark.asterisk


def share_at(pcm: np.ndarray, hz: float, rate: int = 8000) -> float:
    """Of a recording's energy, the share within 60 Hz of ``hz``."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    return float(spectrum[np.abs(freqs - hz) < 60].sum() / spectrum.sum())


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_take_over_hand_back_and_a_whispered_line_at_the_caller(asterisk, callers, tmp_path, mode):
    async with running_engine(asterisk, tmp_path, configure, AIAGENT_PROVIDER="tone", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        _, llm = await scripted(eng, ["Can I move my appointment to Friday?", "So is Friday fine?"])
        # The caller: hears the greeting, waits while the operator speaks, asks (to the operator),
        # waits for the hand-back, asks again (to the agent), hears the answer, stays on.
        call = callers.place_call([WaitAgentDone(0.5), Pause(2.5), Say(str(HELLO)), Pause(3.0), Say(str(HELLO)),
                                   WaitAgent(0.4, timeout_s=15), WaitAgentDone(0.5), Pause(20.0)], record=True)
        cid = await wait_for(lambda: call.far_channel if call.far_channel in eng.calls.calls else None, what="the call in the engine")
        await wait_for(lambda: (s := eng.store.get(cid)) is not None and s.transcript and s.conversation is ConversationState.LISTENING
                       and not s.playbacks, what="the greeting played")
        taken = time.monotonic()
        assert eng.take_over(cid, ALICE)
        voice = tone(OPERATOR_HZ, 1.0)
        for i in range(0, len(voice), 640):  # 20 ms blocks in real time, as a microphone gives them (the engine keeps 200 ms at most)
            eng.operator_audio(cid, voice[i : i + 640], 16000)
            await asyncio.sleep(0.02)
        await wait_for(lambda: heard_at(call.agent_frames, taken, OPERATOR_HZ) >= 0.8, what="the operator heard by the caller")
        await wait_for(lambda: any(t.role == "caller" for t in eng.store.get(cid).transcript), timeout=15, what="the caller transcribed")
        await wait_for(lambda: eng.calls.calls[cid].provider_call._turn_task.done(), what="the caller's turn over")
        assert llm.prompts == [] and heard_at(call.agent_frames, taken, ANSWER_HZ) == 0
        assert eng.hand_back(cid, ALICE)
        back = time.monotonic()
        await wait_for(lambda: heard_at(call.agent_frames, back, ANSWER_HZ) >= 0.4, timeout=20, what="the agent's answer after the hand-back")
        assert '"Can I move my appointment to Friday?"' in llm.prompts[-1][-2]["content"]
        await wait_for(lambda: eng.store.get(cid).conversation is ConversationState.LISTENING and not eng.store.get(cid).playbacks,
                       what="the answer played")
        whispered = time.monotonic()
        assert eng.operator_say(cid, WHISPER, ALICE)
        await wait_for(lambda: heard_at(call.agent_frames, whispered, WHISPER_HZ) >= 0.5, what="the whispered line heard")
        assert await eng.hangup(cid)
        await asyncio.wait_for(call.finished.wait(), 15)
    # MixMonitor's recording of what the caller heard has the operator's voice, the answer and the line.
    heard_wav = Path(f"{call.recording}-heard.wav")
    await wait_for(lambda: heard_wav.exists() and heard_wav.stat().st_size > 44, what="MixMonitor's recording")
    with wave.open(str(heard_wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    for hz in (OPERATOR_HZ, ANSWER_HZ, WHISPER_HZ):
        assert share_at(pcm, hz) > 0.05, (hz, share_at(pcm, hz))


async def test_an_attached_operator_listens_takes_over_whispers_and_hands_back(asterisk, callers, tmp_path):
    """The same over the console socket, as ``aiagent-tui attach`` does it: the attached operator
    hears the caller, takes the call over and speaks (a tone from their microphone, heard by the
    caller and in MixMonitor's recording), hands back (the agent answers), whispers a line (heard);
    the call's history names the attached user."""
    from aiagent_tui.attach import AttachedEngine
    from aiagent_tui.monitor import TAP_KEY
    from engine.console import ConsoleServer
    from tests.test_console_operator import ATTACHED, socket_path

    async with running_engine(asterisk, tmp_path, configure, AIAGENT_PROVIDER="tone", AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        _, llm = await scripted(eng, ["Can I move my appointment to Friday?", "So is Friday fine?"])
        server = ConsoleServer(eng, socket_path())
        await server.start()
        attached = AttachedEngine(server.path)
        try:
            await attached.connect()
            # The caller: hears the greeting, speaks (to the operator who has the call by then),
            # speaks again after the hand-back (to the agent), hears the answer, stays on.
            call = callers.place_call([WaitAgentDone(0.5), Pause(3.0), Say(str(HELLO)), Pause(3.0), Say(str(HELLO)),
                                       WaitAgent(0.4, timeout_s=15), WaitAgentDone(0.5), Pause(20.0)], record=True)
            cid = await wait_for(lambda: call.far_channel if call.far_channel in eng.calls.calls else None, what="the call in the engine")
            await wait_for(lambda: any(c.call_id == cid for c in attached.store.calls), what="the call in the attached view")
            heard: list[tuple[str, bytes]] = []
            assert attached.set_audio_tap(cid, lambda side, pcm16, rate: heard.append((side, pcm16)), key=TAP_KEY)  # m
            await wait_for(lambda: cid in server._audio, what="the attached operator listening")
            await wait_for(lambda: (s := eng.store.get(cid)) is not None and s.transcript and s.conversation is ConversationState.LISTENING
                           and not s.playbacks, what="the greeting played")

            assert attached.take_over(cid, "")
            await wait_for(lambda: eng.store.get(cid).operator, until=lambda who: who == ATTACHED, what="the call taken over by the attached user")
            taken = time.monotonic()
            # The operator's microphone: a second of tone in 20 ms frames, in real time as a microphone gives them.
            voice = np.frombuffer(tone(OPERATOR_HZ, 1.0, 8000), np.int16)
            for i in range(0, len(voice), 160):
                attached.operator_audio(cid, voice[i : i + 160].tobytes(), 8000)
                await asyncio.sleep(0.02)
            await wait_for(lambda: heard_at(call.agent_frames, taken, OPERATOR_HZ) >= 0.8, what="the operator heard by the caller")

            # The caller speaks: the attached operator hears it, the transcript has it, the agent is silent.
            await wait_for(lambda: sum(1 for side, p in heard if side == "caller" and np.abs(np.frombuffer(p, np.int16)).max() > 2000),
                           timeout=15, until=lambda n: n >= 25, what="half a second of the caller's voice at the attached listener")
            await wait_for(lambda: any(t.role == "caller" for t in eng.store.get(cid).transcript), timeout=15, what="the caller transcribed")
            await wait_for(lambda: eng.calls.calls[cid].provider_call._turn_task.done(), what="the caller's turn over")
            assert llm.prompts == [] and heard_at(call.agent_frames, taken, ANSWER_HZ) == 0

            assert attached.hand_back(cid, "")
            await wait_for(lambda: eng.store.get(cid).operator, until=lambda who: who == "", what="the call handed back")
            back = time.monotonic()
            await wait_for(lambda: heard_at(call.agent_frames, back, ANSWER_HZ) >= 0.4, timeout=20, what="the agent's answer after the hand-back")
            assert '"Can I move my appointment to Friday?"' in llm.prompts[-1][-2]["content"]
            await wait_for(lambda: eng.store.get(cid).conversation is ConversationState.LISTENING and not eng.store.get(cid).playbacks,
                           what="the answer played")
            whispered = time.monotonic()
            assert attached.operator_say(cid, WHISPER, "")
            await wait_for(lambda: heard_at(call.agent_frames, whispered, WHISPER_HZ) >= 0.5, what="the whispered line heard")
            assert await attached.hangup(cid)
            await asyncio.wait_for(call.finished.wait(), 15)
        finally:
            await attached.close()
            await server.stop()
        record = await history_of(eng, cid)
    assert [(a.kind, a.by) for a in record.actions if a.kind in ("take_over", "hand_back", "say")] == [
        ("take_over", ATTACHED), ("hand_back", ATTACHED), ("say", ATTACHED)]
    assert any(line.role == "agent" and line.text == WHISPER and line.by == ATTACHED for line in record.transcript)
    # MixMonitor's recording of what the caller heard has the operator's voice, the answer and the line.
    heard_wav = Path(f"{call.recording}-heard.wav")
    await wait_for(lambda: heard_wav.exists() and heard_wav.stat().st_size > 44, what="MixMonitor's recording")
    with wave.open(str(heard_wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    for hz in (OPERATOR_HZ, ANSWER_HZ, WHISPER_HZ):
        assert share_at(pcm, hz) > 0.05, (hz, share_at(pcm, hz))
