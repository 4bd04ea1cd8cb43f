"""Item 6 of the fault probe: a cloud provider that is down must not look ready. Deepgram's Voice
Agent is played by tests/deepgram_server.py; "down" is its port with nothing listening."""

from __future__ import annotations

import asyncio

import pytest

from pbxsim.script import Pause, Say, WaitAgent, WaitAgentDone
from tests.conftest import HELLO, free_port, running_engine, wait_for
from tests.deepgram_server import API_KEY, Behaviour, FakeDeepgram


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", API_KEY)


def dg(url: str, **cfg):
    def configure(c):
        c.providers.deepgram.reconnect_initial_s = 0.1
        c.providers.deepgram.reconnect_max_s = 0.3
        for k, v in cfg.items():
            setattr(c.providers.deepgram, k, v)

    return configure


async def test_deepgram_down_calls_fall_back_at_once_and_come_back_when_it_does(pbx, tmp_path, api_key):
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    async with running_engine(pbx, tmp_path, dg(url, circuit_open_s=0.5), AIAGENT_PROVIDER="deepgram",
                              DEEPGRAM_AGENT_URL=url, AIAGENT_FALLBACK_PROVIDER="echo") as eng:
        provider = eng.providers["deepgram"]
        assert provider.readiness().ready and eng.summary().status == "ok"  # nothing known yet
        # The first caller after the outage: one refused connect, then the fallback answers.
        first = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.5), Pause(0.3)])
        await asyncio.wait_for(first.finished.wait(), 30)
        assert first.media.agent_heard_s() > 0.5  # the echo of what the caller said
        summary = eng.summary()
        dg_ready = summary.providers["deepgram"]
        assert summary.status == "degraded" and not dg_ready.ready and "Connect" in dg_ready.detail
        # Known down: the next callers go straight to the fallback.
        second = pbx.place_call(str(HELLO), hold_s=0.3)
        await wait_for(lambda: eng.store.get(second.id) is not None)
        assert eng.store.get(second.id).provider.name == "echo"
        await asyncio.wait_for(second.finished.wait(), 20)
        # Deepgram comes back: the half-open probe closes the circuit, new calls use it again.
        server = FakeDeepgram()
        await server.start(port)
        try:
            await wait_for(lambda: provider.readiness().ready)
            assert provider.breaker.successes == 1 and server.seen.settings == []  # the probe said nothing
            third = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(0.5), WaitAgentDone(0.3)])
            await wait_for(lambda: eng.store.get(third.id) is not None)
            assert eng.store.get(third.id).provider.name == "deepgram"
            await asyncio.wait_for(third.finished.wait(), 40)
            assert eng.summary().status == "ok"
        finally:
            await server.stop()
    assert pbx.leftovers() == ([], [])


async def test_failures_count_afresh_after_each_good_session(pbx, tmp_path, api_key):
    """A session that drops after every answer is not a provider that keeps failing: with one
    reconnect allowed, the call survives three drops because each reconnect was a good session."""
    server = FakeDeepgram(Behaviour(close_every_turn=True, answer_ms=300))
    await server.start()
    try:
        async with running_engine(pbx, tmp_path, dg(server.url, reconnect_attempts=1), AIAGENT_PROVIDER="deepgram",
                                  DEEPGRAM_AGENT_URL=server.url, AIAGENT_FALLBACK_PROVIDER="echo") as eng:
            script = [WaitAgentDone(0.3)] + [Say(str(HELLO)), WaitAgent(0.2), WaitAgentDone(0.5)] * 3
            rec = pbx.place_call(script=script)
            await wait_for(lambda: eng.store.get(rec.id) is not None)
            session = eng.store.get(rec.id)
            await asyncio.wait_for(rec.finished.wait(), 60)
            assert session.provider.name == "deepgram"  # never fell back
            assert server.seen.answers == 3 and server.seen.connections == 4
    finally:
        await server.stop()


async def test_deepgram_gone_mid_call_moves_the_call_to_the_fallback(pbx, tmp_path, api_key, caplog):
    """A good session, then Deepgram goes away for good: after reconnect_attempts the call is
    handed to the fallback, which answers the caller's next words."""
    server = FakeDeepgram(Behaviour(close_after_turns=1, answer_ms=300))
    await server.start()
    async with running_engine(pbx, tmp_path, dg(server.url, reconnect_attempts=2), AIAGENT_PROVIDER="deepgram",
                              DEEPGRAM_AGENT_URL=server.url, AIAGENT_FALLBACK_PROVIDER="echo") as eng:
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Say(str(HELLO)), WaitAgent(0.2), WaitAgentDone(0.5),
                                     Pause(3.0), Say(str(HELLO)), WaitAgent(0.5), Pause(0.5)])
        await wait_for(lambda: server.seen.answers == 1, timeout=30)
        await server.stop()  # gone: every reconnect is refused
        await wait_for(lambda: (s := eng.store.get(rec.id)) is not None and s.provider.name == "echo", timeout=30)
        await asyncio.wait_for(rec.finished.wait(), 60)
        assert rec.report(pbx)["ended_by"] == "caller"
        assert not eng.providers["deepgram"].readiness().ready  # the failed reconnects opened the circuit
    assert pbx.leftovers() == ([], [])
    # Handed over by the reconnect limit, not rescued from a crashed session task.
    assert not [r for r in caplog.records if "session task failed" in r.getMessage()]
    assert any("Deepgram unavailable after 3 attempts" in r.getMessage() for r in caplog.records)
