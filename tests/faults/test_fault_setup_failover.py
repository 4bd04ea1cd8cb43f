"""Issue 47: a provider that goes down while calls are being set up. The provider is chosen at
StasisStart and opened after answer, bridge and ExternalMedia; a call whose setup straddles the
moment its circuit opens takes the fallback, as the calls after it do, and is not dropped."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pbxsim.script import Pause, Say, WaitAgent
from tests.conftest import HELLO, free_port, running_engine, wait_for
from tests.deepgram_server import API_KEY

BURST = 5
SLOW_SETUP_S = 4.0  # the PBX's ExternalMedia answer, for the burst: long enough for the circuit to open


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", API_KEY)


def dg(c):
    c.providers.deepgram.reconnect_initial_s = 0.1
    c.providers.deepgram.reconnect_max_s = 0.3


async def test_calls_in_setup_when_deepgram_goes_down_take_the_fallback(pbx, tmp_path, api_key, caplog):
    caplog.set_level(logging.INFO)
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens: unreachable, but nobody knows it yet
    async with running_engine(pbx, tmp_path, dg, AIAGENT_PROVIDER="deepgram", DEEPGRAM_AGENT_URL=url,
                              AIAGENT_FALLBACK_PROVIDER="echo") as eng:
        deepgram = eng.providers["deepgram"]
        assert deepgram.readiness().ready  # no failure seen: new calls are given Deepgram
        script = [Say(str(HELLO)), WaitAgent(0.5), Pause(0.3)]
        # A burst whose setups the PBX holds up at ExternalMedia: each has been given Deepgram.
        pbx.faults.delays["channels.externalMedia"] = SLOW_SETUP_S
        burst = [pbx.place_call(script=script) for _ in range(BURST)]
        await wait_for(lambda: sum(op == "channels.externalMedia" for op, _ in pbx.requests) == BURST)
        sessions = [eng.store.get(r.id) for r in burst]
        assert [s.provider.name for s in sessions] == ["deepgram"] * BURST
        # One more caller, set up at once: its failed connect opens Deepgram's circuit while the
        # burst is still in setup.
        del pbx.faults.delays["channels.externalMedia"]
        leader = pbx.place_call(script=script)
        await wait_for(lambda: not deepgram.readiness().ready, timeout=SLOW_SETUP_S / 2)
        assert all(eng.store.get(r.id).external_channel_id is None for r in burst), "the burst's setups went on before the circuit opened"

        for rec in [leader, *burst]:
            await asyncio.wait_for(rec.finished.wait(), 60)
        for rec in burst:
            report = rec.report(pbx)
            assert report["answered"] and report["bridged"] and report["ended_by"] == "caller", report
            assert rec.media.agent_heard_s() > 0.5  # the fallback (echo) answered what they said
        assert eng.store.calls_failed == 0
        for s in sessions:  # what the console and the history show of it
            assert s.provider.name == "echo" and "provider deepgram is not ready" in s.provider.last_error
        assert eng.store.calls_total == BURST + 1

    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "setup failed" in m]
    # Each call of the burst says once which provider took it and why.
    went = [m for m in messages if "the call goes to the fallback provider echo" in m]
    assert len(went) == BURST and all("provider deepgram is not ready" in m for m in went), went
    assert pbx.leftovers() == ([], [])
