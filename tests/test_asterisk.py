"""End to end on the real Asterisk 22 (../shared/asterisk/): the engine in this process, callers placed
through the PBX's own dialplan (pbxsim/asterisk.py), what they hear taken at the caller's side and
recorded by MixMonitor. After every test nothing is left on the PBX (the ``callers`` fixture) and
nothing in the engine's media folder."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.sessions import ActionChanged, BargeIn, CallLog, TranscriptAdded
from pbxsim.asterisk import Ari, AriError, AsteriskCallers, AsteriskInstance, RealCall
from pbxsim.script import Dtmf, Line, Pause, Say, WaitAgent, WaitAgentDone
from providers.profile import AgentProfile, Department
from tests.conftest import AGENT_PASS, HELLO, THANKS, free_port, get_json, history_of, no_leftovers_on, running_engine, wait_for

pytestmark = pytest.mark.asterisk

ROOT = Path(__file__).resolve().parent.parent
BILLING = Department(description="invoices, payments and refunds", digit="1", context="transfer-target", extension="201")


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


def media_empty(tmp_path: Path) -> bool:
    d = tmp_path / "media"
    return not d.exists() or not any(p.suffix in (".ulaw", ".sln", ".sln16") for p in d.iterdir())


async def global_var_set(ari: Ari, name: str, timeout: float = 30) -> str:
    """A global variable the dialplan sets (fallback, transfer target), once it is set."""
    return await wait_for(lambda: ari.global_var(name), timeout, 0.05, what=f"the dialplan's global {name} set")


async def ended(call: RealCall, timeout: float = 30) -> None:
    await asyncio.wait_for(call.finished.wait(), timeout)
    assert call.error is None, call.error


# ---- the line itself: echo provider, no models

@pytest.mark.parametrize("mode", ["stream", "file"])
@pytest.mark.parametrize("via", ["local", "iax2"])
async def test_echo_call_bridged_heard_and_cleaned(asterisk, callers, tmp_path, mode, via):
    async with running_engine(asterisk, tmp_path, AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        # The dialplan's Answer() waits up to 500 ms for the caller's first audio: a caller who
        # speaks at once is half a second into the prompt before the engine hears it.
        call = callers.place_call([Pause(1.0), Say(str(AGENT_PASS)), Pause(1.5)], via=via)
        await ended(call)
        assert call.answered and call.bridged and call.ended_by == "caller"
        # The echo (500 ms late) of 3.3 s of speech came back through both Asterisk bridges.
        assert call.agent_audio_seconds > 2.0, call.report()
        await wait_for(lambda: len(eng.store) == 0)
        assert eng.rtp.routes == {} and eng.calls.calls == {}
    assert media_empty(tmp_path)


async def test_dtx_and_noisy_and_wideband_callers_reach_the_engine(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path, AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        lines = {"dtx": Line(), "noise": Line(noise_dbfs=-60.0), "wide": Line(rate=16000)}
        calls = {k: callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(1.0)], line=ln, caller_number=f"70{i}") for i, (k, ln) in enumerate(lines.items())}
        for c in calls.values():
            await ended(c)
        for name, c in calls.items():
            assert c.agent_audio_seconds > 0.8, (name, c.report())
        # A noisy line sends all the time; a DTX line only while the caller speaks.
        assert calls["noise"].frames_sent > calls["dtx"].frames_sent + 40
        drain(sub)


# ---- ends of a call

async def test_operator_hangup_and_caller_hangup(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path) as eng:
        a = callers.place_call([Pause(20)], caller_number="801")
        b = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(0.5)], caller_number="802")
        await wait_for(lambda: a.far_channel in eng.calls.calls)
        await ended(b)
        assert b.ended_by == "caller"
        assert await eng.hangup(a.far_channel)
        await ended(a, 10)
        assert a.ended_by == "agent"
        rec = await history_of(eng, a.far_channel)
        assert rec.outcome != "live"
    assert media_empty(tmp_path)


async def test_silent_caller_is_asked_then_hung_up_by_the_agent(asterisk, callers, tmp_path):
    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(silence_prompt_s=1.0, silence_hangup_s=1.0)

    async with running_engine(asterisk, tmp_path, profile, AIAGENT_PROVIDER="local") as eng:
        call = callers.place_call([Pause(30)])
        await ended(call, 20)
        assert call.ended_by == "agent"
        rec = await history_of(eng, call.far_channel)
        assert rec.outcome == "agent_hung_up"


# ---- capacity and call distribution

@pytest.mark.parametrize("over_capacity", ["hangup", "dialplan"])
async def test_over_capacity_both_ways(asterisk, callers, tmp_path, over_capacity):
    def cfg_(cfg):
        cfg.asterisk.over_capacity = over_capacity

    async with running_engine(asterisk, tmp_path, cfg_, AIAGENT_MAX_CALLS="1") as eng:
        first = callers.place_call([Pause(6)], caller_number="901")
        await wait_for(lambda: first.far_channel in eng.calls.calls)
        second = callers.place_call([Pause(6)], caller_number="902")
        if over_capacity == "hangup":
            await ended(second, 10)
            assert second.ended_by == "agent"
        else:
            # Back in the dialplan after Stasis(): the site's fallback answers the caller.
            assert await global_var_set(callers.ari, "FALLBACK_902") == "SUCCESS"
            await wait_for(lambda: second.agent_audio_seconds > 0.5)
            await callers.hangup(second)
        assert eng.store.calls_rejected_over_capacity == 1
        await callers.hangup(first)


async def test_two_engines_share_the_pbx_through_stasis_broadcast(asterisk, callers, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_engine(asterisk, tmp_path / "a", ARI_APP="aiagent-1", AIAGENT_MAX_CALLS="2") as one, \
            running_engine(asterisk, tmp_path / "b", ARI_APP="aiagent-2", AIAGENT_MAX_CALLS="2") as two:
        calls = [callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(3)], context="aiagent-shared", caller_number=f"60{i}") for i in range(4)]
        await wait_for(lambda: len(one.calls.calls) + len(two.calls.calls) == 4, timeout=30)
        # Each engine took what it had room for; no call was served twice.
        assert len(one.calls.calls) == 2 and len(two.calls.calls) == 2
        assert not set(one.calls.calls) & set(two.calls.calls)
        for c in calls:
            await ended(c)
            assert c.agent_audio_seconds > 0.8, c.report()


# ---- DTMF and transfer

async def test_keypad_digit_transfers_with_continue(asterisk, callers, tmp_path):
    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(departments={"billing": BILLING}, greeting="Hello.")

    async with running_engine(asterisk, tmp_path, profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([WaitAgentDone(0.3), Dtmf("1"), Pause(12)], caller_number="4001")
        assert await global_var_set(callers.ari, "TRANSFERRED_4001") == "201"
        # The DTMF reached the engine as an ARI event, and the engine let the caller go (not hung up).
        got = drain(sub)
        assert any(isinstance(e, CallLog) and e.message.startswith("DTMF 1") for e in got)
        await wait_for(lambda: len(eng.calls.calls) == 0)
        # The caller talks to the transfer target (its prompt), the engine no longer in the call.
        transferred_at = asyncio.get_running_loop().time()
        await wait_for(lambda: call.agent_heard_s(transferred_at) > 1.0 or call.finished.is_set())
        # The engine's check that the PBX kept the caller (TRANSFER_CHECK_S after) has found it there.
        settled: list = []

        def transfer_settled() -> bool:
            settled.extend(e.action for e in drain(sub) if isinstance(e, ActionChanged) and e.action.state in ("done", "failed"))
            return bool(settled)

        await wait_for(transfer_settled)
        assert settled[0].kind == "transfer" and settled[0].state == "done", settled[0]
        assert not call.finished.is_set()
        await callers.hangup(call)
        rec = await history_of(eng, call.far_channel)
    assert rec.outcome == "transferred", rec.outcome
    assert media_empty(tmp_path)


async def test_a_redirect_the_channel_driver_cannot_carry_out_is_reported_and_the_call_goes_on(asterisk, callers, tmp_path):
    """A department with an endpoint: ARI redirect, the channel driver's own transfer. Asterisk answers
    204 whatever happens; a Local caller, or an IAX2 caller whose far end is an ARI bridge, is not
    transferred. The engine sees the caller still there, says so, and the agent keeps the call."""
    sales = Department(description="new orders", digit="2", endpoint=f"IAX2/127.0.0.1:{asterisk.iax_port}/202")

    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(departments={"sales": sales}, greeting="Hello.")

    async with running_engine(asterisk, tmp_path, profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([WaitAgentDone(0.3), Dtmf("2"), Pause(6)], caller_number="4002", via="iax2")
        failed: list = []

        def transfer_failed() -> bool:
            failed.extend(e.action for e in drain(sub) if isinstance(e, ActionChanged) and e.action.state == "failed")
            return bool(failed)

        await wait_for(transfer_failed, timeout=40)
        assert failed[0].kind == "transfer" and "still here" in failed[0].detail, failed[0]
        assert len(eng.calls.calls) == 1 and not call.finished.is_set()  # the agent still has the call
        await ended(call, 20)
    assert call.ended_by == "caller"
    assert media_empty(tmp_path)


# ---- the engine and the PBX going away

async def test_asterisk_restarted_under_a_running_engine(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path) as eng:
        call = callers.place_call([Pause(30)])
        await wait_for(lambda: call.far_channel in eng.calls.calls)
        await callers.stop()
        asterisk.kill()
        await wait_for(lambda: not eng.events.connected)
        await wait_for(lambda: len(eng.calls.calls) == 0, timeout=30)
        asterisk.start()
        assert await eng.wait_ari_connected(15)
        again = AsteriskCallers(asterisk)
        await again.start()
        try:
            call = again.place_call([Pause(1.0), Say(str(HELLO)), Pause(1.0)])
            await ended(call)
            assert call.agent_audio_seconds > 0.8
        finally:
            await again.stop()
    await no_leftovers_on(asterisk)


async def test_ari_channels_module_unloaded_while_a_call_is_up(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path) as eng:
        call = callers.place_call([Say(str(THANKS)), Pause(2)])
        # Up: set up to the end (a setup's requests to /channels would fail, and its ExternalMedia
        # channel be left on the PBX: another test), and the caller hearing the agent.
        await wait_for(lambda: (s := eng.store.get(call.far_channel)) is not None and s.state.value in ("streaming", "speaking") and call.agent_heard_s() > 0)
        try:
            asterisk.cli("module unload res_ari_channels.so")
            with pytest.raises(AriError) as gone:  # /channels is gone from ARI while it is unloaded
                await callers.ari.channels()
            assert gone.value.status == 404, gone.value
            # The call carries on meanwhile: the caller still hears the agent.
            unloaded_at = asyncio.get_running_loop().time()
            await wait_for(lambda: call.agent_heard_s(unloaded_at) > 0.5)
        finally:
            asterisk.cli("module load res_ari_channels.so")
        await ended(call, 20)
        # The engine carried on; the next call is served.
        nxt = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(1.0)])
        await ended(nxt)
        assert nxt.agent_audio_seconds > 0.8
        await wait_for(lambda: len(eng.calls.calls) == 0)


async def engine_parts(ari: Ari) -> tuple[list[str], list[str]]:
    """The engine's ExternalMedia channels and bridges on the PBX (not the callers' own)."""
    chans = [c["id"] for c in await ari.channels() if c["name"].startswith("UnicastRTP/") and not c["id"].startswith("caller-")]
    bridges = [b["id"] for b in await ari.bridges() if not b.get("name", "").startswith("caller-")]
    return chans, bridges


def _engine_process(asterisk: AsteriskInstance, tmp_path: Path, password: str = "ari", health_port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "ASTERISK_ARI_PORT": str(asterisk.http_port), "ASTERISK_ARI_USERNAME": "ari", "ASTERISK_ARI_PASSWORD": password,
           "RTP_PORT": "0", "HEALTH_PORT": str(health_port), "AIAGENT_MEDIA_DIR": str(tmp_path / "media"),
           "AIAGENT_CONSOLE_SOCKET": str(tmp_path / "c.sock")}
    (tmp_path / "media").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "aiagent_tui.cli", "--no-ui"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def ari_connected(health_port: int, timeout: float = 60) -> None:
    """The engine process's /health says it is connected to ARI (the HTTP contract: it is another process)."""
    await wait_for(lambda: asyncio.to_thread(get_json, f"http://127.0.0.1:{health_port}/health"), timeout, 0.1,
                   until=lambda got: got[1].get("ari_connected"), what=f"the engine on health port {health_port} connected to ARI", ignore=(OSError,))


async def test_wrong_ari_password_is_one_clear_error_and_an_exit_code(asterisk, tmp_path):
    proc = _engine_process(asterisk, tmp_path, password="wrong")
    try:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None), out
    lines = [ln for ln in out.splitlines() if "401" in ln or "password" in ln.lower() or "unauthori" in ln.lower()]
    assert len(lines) >= 1, out
    assert "Traceback" not in out


async def test_engine_killed_mid_call_and_started_again(asterisk, callers, tmp_path):
    health = free_port()
    proc = _engine_process(asterisk, tmp_path, health_port=health)
    try:
        await ari_connected(health)
        call = callers.place_call([Pause(8), Say(str(HELLO)), Pause(30)], caller_number="5151")
        before = await parts_when(callers.ari, lambda p: len(p[0]) == 1 and len(p[1]) == 1)  # its ExternalMedia channel and bridge
        deactivated = deactivations(asterisk)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Asterisk has seen the engine's WebSocket go (it deactivated the app) ...
        await wait_for(lambda: deactivations(asterisk) > deactivated)
        assert not call.finished.is_set()  # ... and keeps the caller in Stasis
        assert await engine_parts(callers.ari) == before  # and nothing deletes the dead engine's parts
        proc = _engine_process(asterisk, tmp_path, health_port=health)
        # The new engine takes the caller in its app as a call, and deletes the dead engine's
        # ExternalMedia channel and bridge.
        after = await parts_when(callers.ari, lambda p: len(p[0]) == 1 and len(p[1]) == 1 and not set(p[0]) & set(before[0]) and not set(p[1]) & set(before[1]))
        assert not call.finished.is_set(), call.report()
        # The call works: the caller speaks (8 s into the call) and hears the echo.
        await wait_for(lambda: call.agent_heard_s(call.said[0][0]) > 0.8 if call.said else False, timeout=40)
        assert await engine_parts(callers.ari) == after
        await callers.hangup(call)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    await no_leftovers_on(asterisk)


def deactivations(asterisk: AsteriskInstance) -> int:
    """How many times Asterisk has deactivated the engine's Stasis app (its WebSocket closed), from its log."""
    log = asterisk.run_dir / "log" / "full.log"
    return log.read_text(errors="replace").count("Deactivating Stasis app 'aiagent'") if log.exists() else 0


async def parts_when(ari: Ari, ok, timeout: float = 60) -> tuple[list[str], list[str]]:
    return await wait_for(lambda: engine_parts(ari), timeout, 0.1, until=ok, what="the engine's parts on the PBX (channels, bridges) as wanted")


# ---- with the local models: greeting, answer, barge-in, talking over the first word

def _heard_between(call: RealCall, start: float, end: float) -> bytes:
    return b"".join(p for t, p in call.heard if start <= t < end)


@pytest.fixture(scope="module")
def whisper():
    from providers.config import LocalProviderConfig
    from providers.local.stt import build_stt

    return build_stt(LocalProviderConfig())


def _transcribe(whisper, ulaw: bytes) -> str:
    from media.audio import Resampler, ulaw_to_pcm16

    return str(whisper.transcribe(Resampler(8000, 16000).process(ulaw_to_pcm16(ulaw))))


# A caller who waits for the greeting, asks for their password and waits for the answer.
QUESTION = [WaitAgentDone(0.5), Say(str(AGENT_PASS)), WaitAgent(0.5, timeout_s=20), WaitAgentDone(0.8, timeout_s=20)]


def greeted_and_answered(events: list, call: RealCall, whisper=None) -> None:
    """The agent's first words were the greeting and the caller's question was transcribed; with
    ``whisper``, the greeting as the caller heard it at their side is the greeting's words; an
    answer came after the question, and the caller heard it."""
    agent = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final]
    caller = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller" and e.turn.final]
    assert agent and agent[0] == AgentProfile().greeting
    assert caller and "password" in caller[0].lower(), caller
    if whisper is not None:
        greeting = _transcribe(whisper, _heard_between(call, call.placed_at, call.said[0][0]))
        assert "help" in greeting.lower() or "thanks" in greeting.lower(), greeting
    assert call.agent_heard_s(call.said_end[0]) > 0.8, call.report()


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_greeting_heard_and_question_answered_with_the_local_models(asterisk, callers, tmp_path, whisper, mode):
    async with running_engine(asterisk, tmp_path, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call(QUESTION, record=True)
        await ended(call, 90)
        events = drain(sub)
    greeted_and_answered(events, call, whisper)
    assert call.turn_latencies(), call.report()
    # MixMonitor recorded both directions at the caller.
    assert call.recording is not None
    heard_wav = Path(f"{call.recording}-heard.wav")
    said_wav = Path(f"{call.recording}-said.wav")
    await wait_for(lambda: heard_wav.exists() and said_wav.exists())
    with wave.open(str(heard_wav)) as w:
        heard = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert len(heard) / 8000 > 3 and np.sqrt(np.mean(heard.astype(float) ** 2)) > 100
    assert media_empty(tmp_path)


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_barge_in_stops_the_agent_at_the_caller(asterisk, callers, tmp_path, mode):
    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(greeting="Hello and welcome to the northside dental practice. We are open from eight in the morning "
                                                        "until six in the evening, Monday to Friday. How can I help you today?")

    async with running_engine(asterisk, tmp_path, profile, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([WaitAgent(1.5), Say(str(AGENT_PASS)), Pause(2.0)])
        await ended(call, 60)
        events = drain(sub)
    assert any(isinstance(e, BargeIn) for e in events)
    reactions = call.barge_in_reactions()
    onset = call.said[0][1]
    assert reactions and reactions[0] < 0.6, (call.report(), call.said, [round(t - onset, 3) for t, _ in call.agent_frames if abs(t - onset) < 1.5])


async def test_a_caller_who_talks_over_the_first_word_is_heard(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Say(str(AGENT_PASS)), WaitAgent(0.5, timeout_s=20), WaitAgentDone(0.8, timeout_s=20)])
        await ended(call, 60)
        events = drain(sub)
    caller = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller" and e.turn.final]
    assert any("password" in t.lower() for t in caller), caller
    assert call.agent_heard_s(call.said_end[0]) > 0.5
