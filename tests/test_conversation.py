"""Turn-taking end to end: simulator + engine + the tone provider, in both downstream modes.

The tone provider answers each utterance with a beep, so every turn, gating decision and barge-in
is visible in what the simulated caller hears, on the simulator's own timeline.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from engine.engine import Engine
from engine.sessions import BargeIn, TranscriptAdded
from pbxsim.server import SimPBX
from pbxsim.script import Pause, Say, WaitAgent, WaitAgentDone
from tests.conftest import AGENT_PASS, HELLO, THANKS, engine_config, wait_for

MODES = pytest.mark.parametrize("downstream_mode", ["stream", "file"])
# Caller onset to the agent's audio stopping at the caller: both modes pause the agent on the
# first 40 ms of voiced speech (barge_in.pause_ms), which can be a frame before the simulator's
# onset mark (its first frame over -40 dBFS); file mode through ARI's playback control.
REACTION_S = {"stream": (-0.03, 0.150), "file": (-0.03, 0.150)}


async def start_engine(pbx: SimPBX, tmp_path: Path, mode: str, tone_ms: int = 2000, record: bool = False, **env: str) -> Engine:
    (tmp_path / "media").mkdir(exist_ok=True)
    cfg = engine_config(pbx, tmp_path, AIAGENT_PROVIDER="tone", AIAGENT_DOWNSTREAM_MODE=mode, **env)
    cfg.providers.tone.duration_ms = tone_ms
    cfg.profiles["default"].record = record
    eng = Engine(cfg)
    await eng.start()
    assert await eng.wait_ari_connected(5)
    return eng


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


@MODES
async def test_agent_playback_mixed_back_into_capture_makes_no_turn(pbx, tmp_path, downstream_mode):
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=2000)
    sub = eng.store.subscribe()
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgentDone(quiet_s=1.5)])
        await wait_for(lambda: eng.store.get(rec.id) is not None)
        session = eng.store.get(rec.id)
        await wait_for(lambda: not session.capture_enabled, timeout=10)  # the agent answers
        packets_at_gate = session.rtp_in.packets
        await wait_for(lambda: session.capture_enabled, timeout=10)
        packets_while_gated = session.rtp_in.packets - packets_at_gate
        await asyncio.wait_for(rec.finished.wait(), 20)
        events = drain(sub)
        caller_turns = [e for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller"]
        agent_turns = [e for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent"]
        # One utterance, one answer, heard in full: the beep coming back did not start a turn.
        assert len(caller_turns) == 1 and len(agent_turns) == 1
        assert 1.9 <= rec.media.agent_heard_s() <= 2.2
        assert not any(isinstance(e, BargeIn) for e in events)
        if downstream_mode == "file":
            # The feedback is real: Asterisk (simulated) sent the engine the bridge's mix, beep
            # included, every 20 ms while the beep played.
            assert packets_while_gated >= 90
        assert eng.store.calls_total == 1
    finally:
        await eng.stop()


@MODES
async def test_caller_speech_during_agent_speech_stops_the_agent(pbx, tmp_path, downstream_mode):
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=6000)
    sub = eng.store.subscribe()
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.6), Say(str(AGENT_PASS)), WaitAgentDone(quiet_s=1.0)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        media = rec.media
        assert len(media.said) == 2
        onset = media.said[1][1]  # when the caller's barge-in speech starts (simulator clock)
        stopped = media.agent_stopped_after(onset)
        assert stopped is not None
        reaction = stopped - onset
        low, high = REACTION_S[downstream_mode]
        assert low < reaction < high, f"agent stopped {reaction * 1000:.0f} ms after the caller started"
        events = drain(sub)
        barge = [e for e in events if isinstance(e, BargeIn)]
        assert len(barge) == 1 and not barge[0].forced
        # The interrupted 6 s beep was cut short, and the barge-in utterance got its own answer.
        agent_turns = [e for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent"]
        assert len(agent_turns) == 2
        first_beep = media.agent_heard_s() - 6.0
        assert first_beep < 2.0
        assert eng.calls.conversation_counters.barge_ins == 1
        if downstream_mode == "file":
            assert eng.calls.playback_counters.files_stopped >= 1
            assert ("playbacks.stop" in {op for op, _ in pbx.requests})
    finally:
        await eng.stop()


@MODES
async def test_a_cough_over_the_agent_pauses_it_and_it_goes_on(pbx, tmp_path, downstream_mode):
    """100 ms of sound over the agent holds its audio at once; too short to be the caller
    talking, so the agent goes on from where it paused: nothing of the answer is lost. In file
    mode the beep's own echo, held and resumed with it, must not read as the caller."""
    import wave

    from media.audio import ulaw_to_pcm16
    from pbxsim.media import load_wav_ulaw, speech_onset_s

    ulaw = load_wav_ulaw(HELLO)
    start = int(speech_onset_s(ulaw) * 8000) + 800  # into the first word: loud and voiced
    cough = tmp_path / "cough.wav"
    with wave.open(str(cough), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ulaw_to_pcm16(ulaw[start : start + 800]))
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=3000, record=True)
    sub = eng.store.subscribe()
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.6), Say(str(cough)), WaitAgentDone(quiet_s=1.0)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        events = drain(sub)
        cc = eng.calls.conversation_counters
        assert (cc.barge_in_pauses, cc.false_pauses, cc.barge_ins) == (1, 1, 0)
        assert not any(isinstance(e, BargeIn) for e in events)
        # The whole beep was heard, with a gap where it paused.
        assert 2.9 <= rec.media.agent_heard_s() <= 3.1
        onset = rec.media.said[1][1]
        assert rec.media.agent_stopped_after(onset) is not None
        if downstream_mode == "file":
            assert [op for op, _ in pbx.requests if op == "playbacks.control"] == ["playbacks.control"] * 2  # pause, unpause
        # The recording's agent side has the pause where the caller heard it, and all of the beep.
        await wait_for(lambda: eng.recordings.written >= 1, timeout=10)
        with wave.open(str(tmp_path / "recordings" / f"{rec.id}.wav")) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
        n = len(pcm) // 160
        loud = np.abs(pcm[: n * 160].reshape(n, 160, 2)).max(axis=1) > 1000  # per 20 ms frame and side
        caller, agent = np.flatnonzero(loud[:, 0]), np.flatnonzero(loud[:, 1])
        cough = caller[np.flatnonzero(np.diff(caller) > 10)[-1] + 1]  # the caller's last run of sound
        gap = int(agent[np.flatnonzero(np.diff(agent) > 2)[0]]) + 1  # the agent's first pause
        assert 0 <= gap - cough <= 6, (gap, cough)
        assert abs(len(agent) * 0.02 - rec.media.agent_heard_s()) <= 0.1, (len(agent) * 0.02, rec.media.agent_heard_s())
    finally:
        await eng.stop()


@MODES
async def test_operator_forced_barge_in(pbx, tmp_path, downstream_mode):
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=8000)
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.5), Pause(1.5)])
        await wait_for(lambda: rec.media.agent_heard_s() >= 0.5, timeout=10)
        assert eng.barge_in(rec.id)
        t = asyncio.get_running_loop().time()
        stopped = await wait_for(lambda: rec.media.agent_stopped_after(t - 0.05), timeout=5, until=lambda s: s is not None,
                                 what="the agent's audio stopping after the forced barge-in")
        assert stopped - t < 0.5, f"the agent spoke on {stopped - t:.2f} s after the barge-in"
        session = eng.store.get(rec.id)
        assert session.capture_enabled and session.barge_ins == 1 and not session.playbacks
        assert eng.health()["conversation"][rec.id]["barge_ins"] == 1
        await asyncio.wait_for(rec.finished.wait(), 15)
        assert rec.media.agent_heard_s() < 2.0
    finally:
        await eng.stop()
    assert not eng.barge_in("no-such-call")


@pytest.mark.parametrize("downstream_mode", ["file"])
async def test_every_playback_file_is_deleted(pbx, tmp_path, downstream_mode):
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=1500)
    media_dir = tmp_path / "media"
    seen: set[str] = set()
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(0.3)])
        while not rec.finished.is_set():
            seen.update(p.name for p in media_dir.iterdir())
            await asyncio.sleep(0.02)
        pc = eng.calls.playback_counters
        assert len(seen) >= 2  # one file per answer, written while the call ran
        assert all(name.endswith(".ulaw") and name.startswith(eng_token(eng, rec, seen)) for name in seen)
        await wait_for(lambda: not any(media_dir.iterdir()))
        assert pc.files_started >= 2 and pc.files_failed == 0 and pc.files_timed_out == 0
    finally:
        await eng.stop()
    assert list(media_dir.iterdir()) == []


def eng_token(eng: Engine, rec, seen: set[str]) -> str:
    """File names carry the call's random token, never caller text."""
    token = next(iter(seen)).rsplit("-", 1)[0]
    assert len(token) == 12 and all(c in "0123456789abcdef" for c in token)
    return token


@pytest.mark.parametrize("downstream_mode", ["file"])
async def test_missing_playback_finished_is_recovered_by_the_timeout(pbx, tmp_path, downstream_mode):
    pbx.drop_event_types.add("PlaybackFinished")  # Asterisk never says a playback ended
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=600)
    eng.config.playback.timeout_margin_ms = 300
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgentDone(0.3), Pause(2.5)])
        await wait_for(lambda: eng.store.get(rec.id) is not None)
        session = eng.store.get(rec.id)
        await wait_for(lambda: not session.capture_enabled, timeout=10)
        # Without PlaybackFinished, the timeout releases the tokens and capture reopens.
        await wait_for(lambda: session.capture_enabled, timeout=5)
        assert session.playbacks == {}
        assert eng.calls.playback_counters.files_timed_out >= 1
        assert list((tmp_path / "media").iterdir()) == []
        await asyncio.wait_for(rec.finished.wait(), 15)
    finally:
        await eng.stop()


@MODES
async def test_fallback_hands_speech_to_the_provider_when_the_vad_hears_nothing(pbx, tmp_path, downstream_mode):
    # A VAD that never fires (every frame below its level floor): speech must still get through.
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=500)
    eng.config.vad.min_level_dbfs = 0.0
    eng.config.vad.fallback_interval_ms = 2000
    try:
        rec = pbx.place_call(script=[Say(str(THANKS)), WaitAgentDone(0.3, timeout_s=6)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        assert eng.calls.conversation_counters.fallback_flushes >= 2
        assert rec.media.agent_heard_s() >= 0.45  # the tone provider answered what the fallback gave it
    finally:
        await eng.stop()


@pytest.mark.parametrize("downstream_mode", ["stream"])
async def test_stream_that_cannot_send_falls_back_to_files(pbx, tmp_path, downstream_mode):
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=1500)
    transport = eng.rtp.transport
    real_sendto = transport.sendto

    def failing_sendto(data, addr):
        raise OSError(101, "Network is unreachable")

    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgentDone(0.3)])
        await wait_for(lambda: rec.bridged)
        eng.rtp.transport.sendto = failing_sendto  # the path to Asterisk breaks
        await asyncio.wait_for(rec.finished.wait(), 20)
        assert eng.calls.playback_counters.stream_fallbacks == 1
        assert rec.media.agent_heard_s() >= 1.3  # the beep arrived anyway, as bridge playback
        assert eng.calls.playback_counters.files_started >= 1
    finally:
        eng.rtp.transport.sendto = real_sendto
        await eng.stop()


@MODES
async def test_metrics_and_turn_latency(pbx, tmp_path, downstream_mode):
    eng = await start_engine(pbx, tmp_path, downstream_mode, tone_ms=400)
    try:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgentDone(0.3), Pause(1.0)])
        await wait_for(lambda: eng.store.get(rec.id) is not None and eng.store.get(rec.id).turns, timeout=15)
        turn = eng.store.get(rec.id).turns[0]
        # The caller's last voiced frame -> end of speech (VAD hangover, 500 ms) -> think 200 ms ->
        # first audio out: the turn counts from that frame, the hangover in it.
        assert turn.endpoint_s is not None and 0.45 <= turn.endpoint_s < 1.5
        assert 0.2 <= turn.latency_s - turn.endpoint_s < 1.0
        assert turn.latency_s == pytest.approx(turn.first_audio_out - turn.last_voice_in)
        url = f"http://127.0.0.1:{eng.health_server.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
        # one live call: either speaking (gated) or listening
        assert re.search(r"^ai_agent_calls_capturing [01]\.0$", text, re.M) and re.search(r"^ai_agent_calls_gated [01]\.0$", text, re.M)
        assert "call_id" not in text  # series do not grow with every call
        assert "ai_agent_barge_in_events_total 0.0" in text
        assert "ai_agent_turn_latency_seconds_count 1.0" in text
        assert "ai_agent_turn_end_of_speech_wait_seconds_count 1.0" in text
        sums = dict(re.findall(r"^(ai_agent_turn_\w+_seconds)_sum (\S+)$", text, re.M))
        assert float(sums["ai_agent_turn_latency_seconds"]) == pytest.approx(turn.latency_s)
        assert float(sums["ai_agent_turn_end_of_speech_wait_seconds"]) == pytest.approx(turn.endpoint_s)
        await asyncio.wait_for(rec.finished.wait(), 15)
    finally:
        await eng.stop()
