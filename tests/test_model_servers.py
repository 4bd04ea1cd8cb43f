"""A pipeline on real model servers, started here from the packages the setup installs: llama.cpp's
server (the OpenAI-compatible API) with the project's default GGUF, wyoming-faster-whisper with its
Whisper model, wyoming-piper with its Piper voice. Killing one of them mid-call costs the caller a
short apology and moves the call to the fallback, never silence or the call."""

from __future__ import annotations

import asyncio
import signal
import sys

import jiwer
import pytest

from aiagent_tui.model_servers import ModelServers, server_specs
from engine.sessions import CallLog, TranscriptAdded
from pbxsim.server import Say, WaitAgent, WaitAgentDone
from providers.config import LocalProviderConfig, ModelServerConfig, PipelineConfig
from providers.profile import AgentProfile
from tests.conftest import AGENT_PASS, HELLO, free_port, running_engine, wait_for

APOLOGY = LocalProviderConfig().apology
NORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    specs = server_specs(LocalProviderConfig(), llm_port=free_port(), stt_port=free_port(), tts_port=free_port(), threads=1,
                         data_dir=tmp_path_factory.mktemp("wyoming"))
    with ModelServers(specs, tmp_path_factory.mktemp("server-logs")) as s:
        yield s


def on_servers(servers: ModelServers, fallback: str = ""):
    def configure(cfg):
        for s in servers.specs:
            cfg.providers.servers[s.name] = ModelServerConfig(api=s.api, url=s.url, model="qwen2.5-coder-0.5b", timeout_s=10.0, probe_interval_s=0.5)
        cfg.providers.pipelines["remote"] = PipelineConfig(stt="stt", llm="llm", tts="tts", fallback=fallback)
        cfg.providers.default = "remote"

    return configure


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


def lines(events: list, role: str = "agent") -> list[str]:
    return [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == role and e.turn.final]


async def test_a_call_is_heard_answered_and_spoken_by_the_servers(pbx, tmp_path, servers):
    async with running_engine(pbx, tmp_path, on_servers(servers), AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        assert eng.providers["remote"].readiness().ready
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4, 30), Say(str(AGENT_PASS)), WaitAgent(0.5, 30), WaitAgentDone(0.8, 30)])
        await asyncio.wait_for(rec.finished.wait(), 90)
        events = drain(sub)
        health = {c["name"]: c for c in eng.health()["components"]}
        greeting_s = eng.providers["remote"].models.cache.get(AgentProfile().greeting).seconds
        metrics = eng.metrics.render().decode()
    heard, said = lines(events, "caller"), lines(events)
    assert jiwer.wer(NORM("Please enter your password followed by the pound key."), NORM(" ".join(heard)) or "x") < 0.2, heard
    assert said[0] == AgentProfile().greeting and len(said) >= 2 and APOLOGY not in said, said
    # Each server did its part, and /health shows each up with its latency.
    for name in ("server-stt", "server-llm", "server-tts"):
        assert health[name]["state"] == "running" and health[name]["jobs"] >= 1 and health[name]["latency_ms"] > 0, health[name]
    assert not any(name.startswith("local-") for name in health)  # no model ran in the engine's processes
    assert 'ai_agent_component_up{component="server-llm"} 1.0' in metrics and 'ai_agent_model_server_latency_seconds{component="server-stt"}' in metrics
    # The caller heard the greeting and then the answer.
    assert rec.media.agent_heard_s() > greeting_s + 1.0
    report = rec.report(pbx)
    assert report["ended_by"] == "caller" and report["hangup_clean"]
    assert pbx.leftovers() == ([], [])


@pytest.mark.parametrize("stage", ["llm", "stt", "tts"])
async def test_a_server_killed_mid_call_costs_an_apology_and_the_call_goes_on_elsewhere(pbx, tmp_path, servers, stage):
    """The fallback here is the tone provider (a beep per utterance), so that which provider
    answered each turn is plain to hear."""
    async with running_engine(pbx, tmp_path, on_servers(servers, fallback="tone"), AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        remote = eng.providers["remote"]
        rec = pbx.place_call(script=[
            WaitAgentDone(0.4, 30),
            Say(str(AGENT_PASS)), WaitAgent(0.3, 30), WaitAgentDone(0.8, 30),  # the apology
            Say(str(HELLO)), WaitAgent(0.3, 30), WaitAgentDone(0.8, 30),  # the fallback's beep
        ])
        if stage == "llm":
            llm = eng.stages.server("llm")
            await wait_for(lambda: llm.in_flight == 1, timeout=60, interval=0.005)  # an answer is being generated
        else:  # the greeting has played; the question is coming
            await wait_for(lambda: rec.media.agent_heard_s() > 1.0, timeout=30)
        servers.kill(stage)
        await asyncio.wait_for(rec.finished.wait(), 90)
        events = drain(sub)
        assert not remote.readiness().ready and eng.provider_for_new_call() == "tone"  # new calls too, while it is down
        health = {c["name"]: c for c in eng.health()["components"]}
        assert health[f"server-{stage}"]["state"] == "down" and health[f"server-{stage}"]["last_error"], health
        # Back: the probe finds it, and new calls use the servers again.
        await asyncio.to_thread(servers.restart, stage)
        await wait_for(lambda: remote.readiness().ready, timeout=30)
        assert eng.provider_for_new_call() == "remote"
    said = lines(events)
    assert APOLOGY in said, said
    assert any(isinstance(e, CallLog) and "provider now tone" in e.message for e in events)
    assert rec.media.agent_heard_s() > 1.0 + 3.0 + 1.5  # greeting, apology, then the beep: never silence
    report = rec.report(pbx)
    assert report["ended_by"] == "caller" and report["hangup_clean"]


def test_doctor_asks_each_model_server_a_pipeline_in_use_names(servers, tmp_path):
    from aiagent_tui.doctor import run_checks
    from engine.config import load_config

    cfg = load_config(None, env={"RTP_PORT": str(free_port()), "HEALTH_PORT": str(free_port()), "ASTERISK_ARI_PORT": str(free_port())})
    on_servers(servers)(cfg)
    cfg.providers.servers["stt"] = ModelServerConfig(api="wyoming", url=f"tcp://127.0.0.1:{free_port()}")  # nobody there
    cfg.providers.servers["unused"] = ModelServerConfig(api="openai", url="http://127.0.0.1:9/v1")
    checks = {c.name: c for c in run_checks(cfg)}
    assert checks["server llm"].ok and " ms)" in checks["server llm"].detail
    assert checks["server tts"].ok
    assert checks["server stt"].ok is False and "Connect call failed" in checks["server stt"].detail and checks["server stt"].fix
    assert "server unused" not in checks and "local models" not in checks  # not used by any pipeline in use


async def test_a_server_that_stops_answering_costs_an_apology_after_its_timeout(pbx, tmp_path, servers):
    """The LLM server hangs (SIGSTOP: alive, accepting connections, answering nothing): after the
    server's timeout_s the caller hears the apology and the call goes on with the fallback."""

    def short_timeout(cfg):
        on_servers(servers, fallback="tone")(cfg)
        cfg.providers.servers["llm"].timeout_s = 2.0

    async with running_engine(pbx, tmp_path, short_timeout, AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[
            WaitAgentDone(0.4, 30),
            Say(str(AGENT_PASS)), WaitAgent(0.3, 30), WaitAgentDone(0.8, 30),  # the apology
            Say(str(HELLO)), WaitAgent(0.3, 30), WaitAgentDone(0.8, 30),  # the fallback's beep
        ])
        await wait_for(lambda: rec.media.agent_heard_s() > 1.0, timeout=30)
        servers.kill("llm", signal.SIGSTOP)
        try:
            await asyncio.wait_for(rec.finished.wait(), 60)
            events = drain(sub)
            health = {c["name"]: c for c in eng.health()["components"]}
            assert health["server-llm"]["state"] == "down" and health["server-llm"]["last_error"] == "timed out", health["server-llm"]
        finally:
            servers.kill("llm", signal.SIGCONT)
        await wait_for(lambda: eng.providers["remote"].readiness().ready, timeout=30)
    assert APOLOGY in lines(events)
    assert any(isinstance(e, CallLog) and "provider now tone" in e.message for e in events)
    assert rec.report(pbx)["ended_by"] == "caller"


async def test_stt_over_the_openai_audio_api(pbx, tmp_path, servers, tmp_path_factory):
    """The same Whisper model behind an OpenAI-compatible /v1/audio/transcriptions server
    (faster-whisper-server), with the LLM and the voice on the other servers."""
    from aiagent_tui.model_servers import ServerSpec
    from providers.local.models import WHISPER_TINY_EN, resolve

    port = free_port()
    whisper = ServerSpec("stt-openai", "openai", "127.0.0.1", port, [
        sys.executable, "-m", "faster_whisper_server", str(resolve(WHISPER_TINY_EN, "")), "--host", "127.0.0.1", "--port", str(port),
    ])
    with ModelServers([whisper], tmp_path_factory.mktemp("fws-logs")):
        def configure(cfg):
            on_servers(servers)(cfg)
            cfg.providers.servers["stt-openai"] = ModelServerConfig(api="openai", url=whisper.url, model="whisper-1", timeout_s=20.0)
            cfg.providers.pipelines["remote"].stt = "stt-openai"

        async with running_engine(pbx, tmp_path, configure, AIAGENT_DOWNSTREAM_MODE="stream") as eng:
            assert eng.providers["remote"].readiness().ready  # no model list there: it answered, so it is up
            sub = eng.store.subscribe()
            rec = pbx.place_call(script=[WaitAgentDone(0.4, 30), Say(str(AGENT_PASS)), WaitAgent(0.5, 30), WaitAgentDone(0.8, 30)])
            await asyncio.wait_for(rec.finished.wait(), 90)
            events = drain(sub)
            stt = {c["name"]: c for c in eng.health()["components"]}["server-stt-openai"]
    heard = lines(events, "caller")
    assert jiwer.wer(NORM("Please enter your password followed by the pound key."), NORM(" ".join(heard)) or "x") < 0.2, heard
    assert stt["state"] == "running" and stt["jobs"] >= 1
    assert len(lines(events)) >= 2 and APOLOGY not in lines(events)
