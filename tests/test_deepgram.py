"""The Deepgram provider: the real deepgram-sdk against a local server speaking the Voice Agent
protocol (tests/deepgram_server.py), end to end through the PBX simulator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.sessions import BargeIn, CallLog, TranscriptAdded
from pbxsim.script import Pause, Say, WaitAgent, WaitAgentDone
from tests.conftest import AGENT_PASS, HELLO, THANKS, running_engine, wait_for
from tests.deepgram_server import API_KEY, Behaviour, FakeDeepgram

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def deepgram():
    server = FakeDeepgram()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", API_KEY)
    return API_KEY


def dg_engine(pbx, tmp_path, deepgram, mode="file", configure=None, **env):
    def cfg(c):
        c.providers.deepgram.reconnect_initial_s = 0.1
        c.providers.deepgram.reconnect_max_s = 0.3
        if configure:
            configure(c)

    return running_engine(pbx, tmp_path, cfg, AIAGENT_PROVIDER="deepgram", DEEPGRAM_AGENT_URL=deepgram.url, AIAGENT_DOWNSTREAM_MODE=mode, **env)


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


@pytest.mark.parametrize("downstream_mode", ["file", "stream"])
async def test_conversation_through_the_voice_agent(pbx, tmp_path, deepgram, api_key, downstream_mode):
    async with dg_engine(pbx, tmp_path, deepgram, downstream_mode) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(0.5), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        events = drain(sub)
    seen = deepgram.seen
    assert seen.auth_headers == [f"Token {API_KEY}"]
    s = seen.settings[0]
    assert s["audio"]["input"] == {"encoding": "linear16", "sample_rate": 16000}
    assert s["audio"]["output"]["encoding"] == "mulaw" and s["audio"]["output"]["sample_rate"] == 8000
    assert s["agent"]["greeting"] and s["agent"]["listen"]["provider"]["model"] == "nova-3"
    assert seen.audio_before_applied == 0 and seen.audio_bytes > 16000 * 2 * 0.5
    texts = [(e.turn.role, e.turn.text) for e in events if isinstance(e, TranscriptAdded) and e.turn.final]
    assert ("caller", "caller turn 1") in texts and ("agent", "answer 1") in texts
    assert texts[0][0] == "agent"  # the greeting
    # Greeting (0.8 s) and answer (1.5 s) were played to the caller.
    assert rec.media.agent_heard_s() >= 2.2
    assert rec.report(pbx)["transcript"] == "caller turn 1"


async def test_user_started_speaking_stops_playback(pbx, tmp_path, deepgram, api_key):
    deepgram.behaviour = Behaviour(answer_ms=6000)
    async with dg_engine(pbx, tmp_path, deepgram, "file", lambda c: setattr(c.barge_in, "enabled", False)) as eng:
        sub = eng.store.subscribe()
        # The engine's own barge-in detection is off: only Deepgram's UserStartedSpeaking can stop it.
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(1.0), Say(str(AGENT_PASS)), Pause(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        events = drain(sub)
    assert [e for e in events if isinstance(e, BargeIn)]
    onset = rec.media.said[1][1]
    stopped = rec.media.agent_stopped_after(onset)
    assert stopped is not None and stopped - onset < 1.0
    assert ("playbacks.stop" in {op for op, _ in pbx.requests})


async def test_a_server_that_closes_mid_call_is_survived(pbx, tmp_path, deepgram, api_key):
    deepgram.behaviour = Behaviour(close_after_turns=1, answer_ms=600)
    async with dg_engine(pbx, tmp_path, deepgram) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgentDone(0.8), Say(str(HELLO)), WaitAgent(0.3), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        events = drain(sub)
    assert deepgram.seen.connections == 2 and len(deepgram.seen.settings) == 2  # Settings sent again ...
    assert "greeting" in deepgram.seen.settings[0]["agent"] and "greeting" not in deepgram.seen.settings[1]["agent"]  # ... without the greeting
    agent = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent"]
    assert "answer 1" in agent and "answer 2" in agent
    assert any(isinstance(e, CallLog) and "reconnecting" in e.message for e in events)


async def test_error_message_reaches_call_log_and_health(pbx, tmp_path, deepgram, api_key):
    deepgram.behaviour = Behaviour(error_after_turns=1, answer_ms=400)
    async with dg_engine(pbx, tmp_path, deepgram) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgentDone(0.5), Pause(1.0)])
        await wait_for(lambda: eng.store.get(rec.id) is not None and eng.store.get(rec.id).provider.last_error, timeout=20)
        health = eng.health()
        call = next(c for c in health["calls"] if c["call_id"] == rec.id)
        assert "THINK_TIMEOUT" in call["provider_error"]
        await asyncio.wait_for(rec.finished.wait(), 20)
        assert any(isinstance(e, CallLog) and "THINK_TIMEOUT" in e.message for e in drain(sub))


async def test_function_call_gets_an_honest_refusal(pbx, tmp_path, deepgram, api_key):
    deepgram.behaviour = Behaviour(function_call=("lookup_account", "{}"), answer_ms=400)
    async with dg_engine(pbx, tmp_path, deepgram):
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(0.2), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 30)
    (resp,) = deepgram.seen.function_responses
    assert resp["id"] == "fc-1" and resp["name"] == "lookup_account"
    assert "not supported" in json.loads(resp["content"])["error"]
    assert deepgram.seen.answers == 1  # the conversation went on


async def test_silent_caller_still_streams_silence(pbx, tmp_path, deepgram, api_key):
    """A two-party bridge sends no RTP while the caller is quiet; Deepgram's endpointing needs to
    hear that silence, so the engine streams it."""

    def no_greeting(c):
        c.profiles["default"].greeting = ""

    async with dg_engine(pbx, tmp_path, deepgram, "file", no_greeting):
        rec = pbx.place_call(script=[Pause(2.0)])  # no packet at all from this caller
        await asyncio.wait_for(rec.finished.wait(), 15)
    assert rec.media.frames_sent == 0
    assert deepgram.seen.audio_bytes >= 32000 * 1.5  # 16 kHz linear16: 1.5 s or more of silence


async def test_keepalive_when_no_audio_goes_out(deepgram, api_key):
    """A keep-alive each keepalive_interval_s of the call's clock while no audio goes out, and
    none before."""
    from providers.config import DeepgramProviderConfig
    from providers.base import CallContext
    from providers.deepgram import DeepgramProvider
    from providers.profile import AgentProfile
    from runtime.clock import ManualClock

    clock = ManualClock()
    provider = DeepgramProvider(DeepgramProviderConfig(agent_url=deepgram.url, keepalive_interval_s=30.0), clock=clock)
    await provider.load()
    call = provider.open_call(CallContext("c1", profile=AgentProfile(greeting=""), clock=clock), [].append)
    await call.start()
    try:
        await wait_for(lambda: call.connects_ok == 1, timeout=5)  # it looks each second of the clock
        clock.advance(29.0)  # (30 s that the loop's own clock never sees in this test)
        assert call.keepalives == 0 and deepgram.seen.keepalives == 0
        clock.advance(1.0)
        await wait_for(lambda: deepgram.seen.keepalives == 1 and call.keepalives == 1, timeout=5)
        clock.advance(30.0)
        await wait_for(lambda: deepgram.seen.keepalives == 2 and call.keepalives == 2, timeout=5)
    finally:
        await call.stop()
        await provider.close()
    assert deepgram.seen.audio_bytes == 0 and deepgram.seen.client_messages[0] == "Settings"


async def test_a_lost_session_is_reconnected_after_its_backoff_on_the_calls_clock(deepgram, api_key):
    """A session that drops is connected again once the backoff's delay has passed on the call's
    clock (the first delay: half to all of reconnect_initial_s), with Settings again."""
    from providers.base import CallContext, ProviderError
    from providers.config import DeepgramProviderConfig
    from providers.deepgram import DeepgramProvider
    from providers.profile import AgentProfile
    from runtime.clock import ManualClock

    deepgram.behaviour = Behaviour(close_after_applied=True)
    clock = ManualClock()
    provider = DeepgramProvider(DeepgramProviderConfig(agent_url=deepgram.url, reconnect_initial_s=20.0, reconnect_max_s=80.0), clock=clock)
    events: list = []
    call = provider.open_call(CallContext("c1", profile=AgentProfile(greeting="Hi."), clock=clock), events.append)
    await call.start()
    try:
        # Told once its backoff is set on the clock.
        await wait_for(lambda: any(isinstance(e, ProviderError) and "reconnecting" in e.message for e in events), timeout=5)
        assert call.connects_ok == 1 and not any(isinstance(e, ProviderError) and e.fatal for e in events)
        clock.advance(9.99)
        assert call.connects == 1
        clock.advance(10.01)  # (20 s that the loop's own clock never sees in this test)
        await wait_for(lambda: call.connects_ok == 2, timeout=5)
    finally:
        await call.stop()
        await provider.close()
    assert deepgram.seen.connections == 2
    assert "greeting" in deepgram.seen.settings[0]["agent"] and "greeting" not in deepgram.seen.settings[1]["agent"]


async def test_the_watchdog_resets_a_server_silent_for_watchdog_s_of_the_calls_clock_while_the_caller_speaks(deepgram, api_key):
    from providers.base import CallContext, ProviderError
    from providers.config import DeepgramProviderConfig
    from providers.deepgram import DeepgramProvider
    from providers.profile import AgentProfile
    from runtime.clock import ManualClock

    deepgram.behaviour = Behaviour(silent=True)
    clock = ManualClock()
    cfg = DeepgramProviderConfig(agent_url=deepgram.url, watchdog_s=10.0, reconnect_initial_s=20.0, reconnect_max_s=80.0)
    provider = DeepgramProvider(cfg, clock=clock)
    events: list = []
    call = provider.open_call(CallContext("c1", profile=AgentProfile(greeting=""), clock=clock), events.append)
    await call.start()
    try:
        await wait_for(lambda: call.connects_ok == 1, timeout=5)  # the server's last word
        clock.advance(30.0)
        assert call._lost is None  # a silent server while nobody speaks is fine
        call.utterance_started()
        clock.advance(1.0)  # its next look: silent for 31 s by then
        await wait_for(lambda: any(isinstance(e, ProviderError) and "reconnecting" in e.message for e in events), timeout=5)
        assert any("no message from Deepgram for 10 s while the caller spoke" in e.message for e in events)
        clock.advance(20.0)  # the backoff; the new session's server is silent too
        await wait_for(lambda: call.connects_ok == 2, timeout=5)
        clock.advance(10.0)
        assert call._lost is None  # silent for exactly watchdog_s: not yet
        clock.advance(1.0)
        assert call._lost is not None
    finally:
        await call.stop()
        await provider.close()


async def test_watchdog_resets_a_silent_server(pbx, tmp_path, deepgram, api_key):
    deepgram.behaviour = Behaviour(silent=True)

    def impatient(c):
        c.providers.deepgram.watchdog_s = 1.0

    async with dg_engine(pbx, tmp_path, deepgram, "file", impatient):
        rec = pbx.place_call(script=[Say(str(THANKS)), Pause(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 20)
    assert deepgram.seen.connections >= 2


async def test_no_key_means_not_ready_and_calls_go_to_the_fallback(pbx, tmp_path, deepgram, monkeypatch):
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    async with dg_engine(pbx, tmp_path, deepgram, AIAGENT_FALLBACK_PROVIDER="tone") as eng:
        health = eng.health()
        assert health["providers"]["deepgram"] == {"ready": False, "detail": "DEEPGRAM_API_KEY is not set"}
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.5), WaitAgentDone(0.3)])
        await wait_for(lambda: eng.store.get(rec.id) is not None)
        assert eng.store.get(rec.id).provider.name == "tone"
        await asyncio.wait_for(rec.finished.wait(), 20)
        assert rec.media.agent_heard_s() > 1.5  # the tone provider answered
    assert deepgram.seen.connections == 0


async def test_a_call_falls_back_when_deepgram_keeps_failing(pbx, tmp_path, deepgram, monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", "wrong-key")  # every connect is refused (401)
    async with dg_engine(pbx, tmp_path, deepgram, AIAGENT_FALLBACK_PROVIDER="tone") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(2.0), Say(str(HELLO)), WaitAgent(0.5), WaitAgentDone(0.3)])
        await wait_for(lambda: eng.store.get(rec.id) is not None and eng.store.get(rec.id).provider.name == "tone", timeout=15)
        await asyncio.wait_for(rec.finished.wait(), 20)
        assert rec.media.agent_heard_s() > 1.5
        assert any(isinstance(e, CallLog) and "provider now tone" in e.message for e in drain(sub))
        # The circuit is open: Deepgram is not ready, and the next caller goes to tone directly.
        ready = eng.providers["deepgram"].readiness()
        assert not ready.ready and "HTTP 401" in ready.detail
        assert eng.health()["status"] == "degraded"
        nxt = pbx.place_call(str(HELLO), hold_s=0.5)
        await wait_for(lambda: eng.store.get(nxt.id) is not None, timeout=5)
        assert eng.store.get(nxt.id).provider.name == "tone"
        await asyncio.wait_for(nxt.finished.wait(), 10)
    assert len(deepgram.seen.auth_headers) == 1  # one refused connect: no retries of a session that never was


async def test_switching_a_live_call_and_new_calls(pbx, tmp_path, deepgram, api_key):
    async with dg_engine(pbx, tmp_path, deepgram) as eng:
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Pause(0.5), Say(str(HELLO)), WaitAgent(0.5), WaitAgentDone(0.3)])
        await wait_for(lambda: rec.media.agent_heard_s() > 0.5, timeout=10)
        assert await eng.set_call_provider(rec.id, "tone")
        await eng.set_default_provider("echo")
        await asyncio.wait_for(rec.finished.wait(), 20)
        assert deepgram.seen.answers == 0  # the caller's words went to the tone provider
        assert rec.media.agent_heard_s() > 2.5  # greeting 0.8 s + the 2 s beep
        second = pbx.place_call(str(HELLO), hold_s=1.0)
        await wait_for(lambda: eng.store.get(second.id) is not None)
        assert eng.store.get(second.id).provider.name == "echo"
        await asyncio.wait_for(second.finished.wait(), 15)


def test_api_key_never_appears_in_logs_health_or_check_config(tmp_path):
    secret = "dg-secret-" + "9" * 20
    env = {**os.environ, "DEEPGRAM_API_KEY": secret, "AIAGENT_PROVIDER": "deepgram", "DEEPGRAM_AGENT_URL": "ws://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "aiagent_tui.cli", "check-config"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and secret not in r.stdout + r.stderr
    code = f"""
import asyncio, json, logging, urllib.error, urllib.request, sys
sys.path.insert(0, {str(ROOT)!r})
logging.basicConfig(level=logging.DEBUG)
from engine.config import load_config
from engine.engine import Engine
from pbxsim.server import SimPBX
async def main():
    pbx = SimPBX(); await pbx.start(port=0)
    eng = Engine(load_config(None, env={{"ASTERISK_ARI_PORT": str(pbx.port), "RTP_PORT": "0", "HEALTH_PORT": "0",
        "AIAGENT_PROVIDER": "deepgram", "DEEPGRAM_AGENT_URL": "ws://127.0.0.1:9", "AIAGENT_MEDIA_DIR": {str(tmp_path / "m")!r}}}))
    await eng.start(); await eng.wait_ari_connected(5)
    from tests.conftest import HELLO
    rec = pbx.place_call(str(HELLO), hold_s=2.0)
    await asyncio.wait_for(rec.finished.wait(), 20)
    def fetch(path):  # /health answers 503 here (Deepgram unreachable): its body is read all the same
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{{eng.health_server.port}}" + path).read().decode()
        except urllib.error.HTTPError as e:
            return e.read().decode()
    body = await asyncio.to_thread(fetch, "/health")
    body += await asyncio.to_thread(fetch, "/metrics")
    print(body)
    await eng.stop(); await pbx.stop()
asyncio.run(main())
"""
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=90)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    assert "Deepgram" in out  # the failing connects were logged ...
    assert secret not in out  # ... and the key never was


async def test_the_llm_transfers_through_a_function_call(pbx, tmp_path, deepgram, api_key):
    from providers.profile import AgentProfile, Department

    def billing(c):
        c.profiles["default"] = AgentProfile(departments={"billing": Department(description="invoices", context="from-internal", extension="201")})

    deepgram.behaviour = Behaviour(function_call=("transfer_call", '{"department": "billing"}'), answer_ms=400)
    async with dg_engine(pbx, tmp_path, deepgram, "stream", billing) as eng:
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), Pause(5.0)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        await wait_for(lambda: eng.status().actions == (("transfer", "done", 1),), timeout=5)
    fns = {f["name"]: f for f in deepgram.seen.settings[0]["agent"]["think"]["functions"]}
    assert fns["transfer_call"]["parameters"]["properties"]["department"]["enum"] == ["billing"] and "end_call" in fns
    (resp,) = deepgram.seen.function_responses
    assert json.loads(resp["content"]) == {"ok": True, "status": "transferring to billing"}
    # The engine had the announcement said by the agent's own voice and heard out, then transferred.
    assert deepgram.seen.injected == ["Putting you through to billing now."]
    left = rec.left_stasis_at
    assert left is not None and max(t for t, _ in rec.media.agent_frames) <= left + 0.05
    assert sum(len(p) for t, p in rec.media.agent_frames if left - 1.0 <= t <= left) / 8000 >= 0.55  # its 600 ms
    r = rec.report(pbx)
    assert r["transferred_to"] == "201@from-internal" and r["hangup_clean"]


async def test_a_function_call_outside_the_profile_is_refused(pbx, tmp_path, deepgram, api_key):
    deepgram.behaviour = Behaviour(function_call=("transfer_call", '{"department": "+15551234567"}'), answer_ms=400)
    async with dg_engine(pbx, tmp_path, deepgram, "stream") as eng:
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(0.2), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        assert eng.status().actions == ()
    (resp,) = deepgram.seen.function_responses
    assert "error" in json.loads(resp["content"])
    assert rec.report(pbx)["left_stasis"] is None and deepgram.seen.answers == 1
