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
from pbxsim.script import Say, WaitAgent, WaitAgentDone
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
            cfg.providers.servers[s.name] = ModelServerConfig(api=s.api, url=s.url, model=LocalProviderConfig().llm_model, timeout_s=10.0, probe_interval_s=0.5)
        cfg.providers.pipelines["remote"] = PipelineConfig(stt="stt", llm="llm", tts="tts", fallback=fallback)
        cfg.providers.default = "remote"

    return configure


def stage_on(servers: ModelServers, stage: str, spec, model: str):
    """The servers' pipeline with one stage on another (OpenAI-API) server."""
    def configure(cfg):
        on_servers(servers)(cfg)
        cfg.providers.servers[spec.name] = ModelServerConfig(api="openai", url=spec.url, model=model, timeout_s=20.0)
        setattr(cfg.providers.pipelines["remote"], stage, spec.name)

    return configure


async def ask_once(pbx, eng) -> list:
    """A call that hears the greeting, asks one question and hears the answer: its events."""
    sub = eng.store.subscribe()
    rec = pbx.place_call(script=[WaitAgentDone(0.4, 30), Say(str(AGENT_PASS)), WaitAgent(0.5, 30), WaitAgentDone(0.8, 30)])
    await asyncio.wait_for(rec.finished.wait(), 90)
    return drain(sub)


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


async def test_llama_cpp_pythons_own_server_answers_too(pbx, tmp_path, servers, tmp_path_factory):
    """The LLM on llama-cpp-python's server (``python -m llama_cpp.server``, one request at a time)
    instead of llama-server, with the same Whisper and Piper servers."""
    from aiagent_tui.model_servers import ServerSpec
    from providers.local.models import resolve_llm

    port = free_port()
    llm = ServerSpec("llm-py", "openai", "127.0.0.1", port, [
        sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_llm("qwen2.5-coder-0.5b", "")), "--model_alias", "qwen2.5-coder-0.5b",
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--interrupt_requests", "False", "--verbose", "False",
    ])
    with ModelServers([llm], tmp_path_factory.mktemp("llama-cpp-python-logs")):
        async with running_engine(pbx, tmp_path, stage_on(servers, "llm", llm, "qwen2.5-coder-0.5b"), AIAGENT_DOWNSTREAM_MODE="stream") as eng:
            events = await ask_once(pbx, eng)
            health = {c["name"]: c for c in eng.health()["components"]}
    said = lines(events)
    assert len(said) >= 2 and APOLOGY not in said, said
    assert health["server-llm-py"]["state"] == "running" and health["server-llm-py"]["jobs"] >= 1
    assert "server-llm" not in health


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
        async with running_engine(pbx, tmp_path, stage_on(servers, "stt", whisper, "whisper-1"), AIAGENT_DOWNSTREAM_MODE="stream") as eng:
            assert eng.providers["remote"].readiness().ready  # no model list there: it answered, so it is up
            events = await ask_once(pbx, eng)
            stt = {c["name"]: c for c in eng.health()["components"]}["server-stt-openai"]
    heard = lines(events, "caller")
    assert jiwer.wer(NORM("Please enter your password followed by the pound key."), NORM(" ".join(heard)) or "x") < 0.2, heard
    assert stt["state"] == "running" and stt["jobs"] >= 1
    assert len(lines(events)) >= 2 and APOLOGY not in lines(events)


async def test_the_llm_server_ends_the_call_with_a_tool_call(pbx, tmp_path, servers):
    """Words the rules (providers/intents.py) do not act on; offered the profile's actions as tools
    (``tools = true``), the LLM on llama-server calls end_call (the default model writes the call
    as JSON text, which the client takes as the call and does not speak), and the engine says the
    closing line and hangs up. The default model is not trusted with tools in production (README:
    it also hangs up on "I was charged twice"): this is the path a capable model takes."""
    from engine.sessions import ActionChanged
    from pbxsim.script import Pause, SayText
    from providers.intents import decide
    from tests.test_actions import reception

    words = "Okay, I am done now, you can end the call."

    def configure(cfg):
        on_servers(servers)(cfg)
        cfg.providers.servers["llm"].tools = True
        cfg.providers.local.llm_temperature = 0.0
        reception(cfg, greeting="")  # the default model calls tools on a first turn, rarely after its greeting

    async with running_engine(pbx, tmp_path, configure, AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        assert decide(words, eng.config.profiles["default"]) is None
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(1.0), SayText(words), Pause(15.0)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        events = drain(sub)
    acted = [e.action for e in events if isinstance(e, ActionChanged)]
    assert [(a.kind, a.state) for a in acted][-1] == ("hangup", "done"), acted
    assert "the LLM ended the call" in acted[0].reason, acted[0]
    said = lines(events)
    assert said[-1] == AgentProfile().closing and not any("{" in line or "end_call" in line for line in said), said
    report = rec.report(pbx)
    assert report["ended_by"] == "ari" and report["hangup_clean"]


def chunk(content=None, calls=None, finish=None) -> dict:
    delta = {k: v for k, v in (("content", content), ("tool_calls", calls)) if v is not None}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@pytest.mark.parametrize(("chunks", "text", "passed_on", "calls"), [
    # The OpenAI API's own tool calls: name and arguments in pieces, by index.
    ([chunk(calls=[{"index": 0, "id": "c1", "type": "function", "function": {"name": "transfer_call", "arguments": ""}}]),
      chunk(calls=[{"index": 0, "function": {"arguments": '{"department": '}}]),
      chunk(calls=[{"index": 0, "function": {"arguments": '"billing"}'}}], finish="tool_calls")],
     "", [], [("transfer_call", '{"department": "billing"}')]),
    # Written as text (llama-server with the default model): held back, never passed on to be spoken.
    ([chunk("```"), chunk("json\n{\n"), chunk(' "name": "end_call",\n "arguments": {"reason": "bye"}\n}\n'), chunk("```", finish="stop")],
     "", [], [("end_call", '{"reason": "bye"}')]),
    ([chunk("<tool_call>\n"), chunk('{"name": "end_call", "arguments": {}}'), chunk("\n</tool_call>", finish="stop")], "", [], [("end_call", "{}")]),
    # An answer: passed on as it comes, once it cannot be a call.
    ([chunk(" We"), chunk(" open at 8."), chunk(None, finish="stop")], " We open at 8.", [" We", " open at 8."], []),
    # Looked like a call, was not: passed on whole at the end.
    ([chunk("{not json"), chunk(" at all}", finish="stop")], "{not json at all}", ["{not json at all}"], []),
])
def test_a_streamed_reply_is_put_together_with_its_tool_calls(chunks, text, passed_on, calls):
    from providers.remote.openai import _Stream

    stream = _Stream(text_calls=True)
    out = [p for c in chunks if (p := stream.feed(c))]
    reply, held = stream.reply()
    out += [held] if held else []
    assert stream.finished and reply.text == text and out == passed_on
    assert [(c.name, c.arguments) for c in reply.tool_calls] == calls


async def test_a_cancelled_answer_closes_its_stream_and_frees_the_servers_slot(servers):
    """Barge-in cancels the turn: the client closes the stream, and llama-server stops generating
    (its slot is free again at once, not after the answer's 400 tokens)."""
    import aiohttp

    from providers.remote.openai import OpenAiLlm, OpenAiServer

    spec = servers.spec("llm")
    server = OpenAiServer("llm", ModelServerConfig(api="openai", url=spec.url, model=spec.model, timeout_s=20.0))
    llm = OpenAiLlm(server)
    await llm.start()
    first = asyncio.Event()

    async def processing() -> bool:
        async with aiohttp.ClientSession() as http, http.get(spec.url.removesuffix("/v1") + "/slots") as r:
            return any(slot["is_processing"] for slot in await r.json())

    try:
        messages = [{"role": "user", "content": "Count from one to five hundred in words, one number a line."}]
        answer = asyncio.create_task(llm.generate(messages, 400, 0.0, lambda _: first.set()))
        await asyncio.wait_for(first.wait(), 30)
        assert await processing()
        answer.cancel()
        await asyncio.gather(answer, return_exceptions=True)
        await wait_for(processing, timeout=1.0, until=lambda busy: not busy,
                       what="llama-server to stop generating within a second of the stream closing")
        assert server.in_flight == 0 and server.circuit.closed  # a cancel is not a failure of the server
    finally:
        await server.close()
