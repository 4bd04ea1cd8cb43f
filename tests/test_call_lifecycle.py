"""Calls that end early, fail, exceed capacity, or are ended by the operator."""

from __future__ import annotations

import asyncio

import aiohttp

from engine.sessions import CallEnded, CallLog
from pbxsim.server import SimPBX
from tests.conftest import HELLO, THANKS, running_engine, wait_for


async def test_caller_hangs_up_mid_sentence(pbx, engine, tmp_path):
    sub = engine.store.subscribe()
    rec = pbx.place_call(str(THANKS), hold_s=5.0)
    await wait_for(lambda: rec.bridged and rec.media.frames_sent > 40)  # 0.8 s into a 5.5 s prompt
    # A file the call wrote (as playback does) must go with the call.
    token = engine.calls.calls[rec.id].token
    (tmp_path / "media" / f"{token}-0001.ulaw").write_bytes(b"\xff" * 160)
    pbx.hangup_channel(pbx.channels[rec.id], by="caller")
    await asyncio.wait_for(rec.finished.wait(), 10)
    assert rec.hangup_clean
    assert rec.ended_by == "caller"
    assert pbx.leftovers() == ([], [])
    # The engine forgets the call once its DELETEs are answered (the simulator may finish first).
    await wait_for(lambda: engine.store.get(rec.id) is None, timeout=5)
    assert list((tmp_path / "media").iterdir()) == []
    ended = [e for e in _drain(sub) if isinstance(e, CallEnded)]
    assert [e.reason for e in ended] == ["caller hung up"]
    assert ended[0].snapshot.rtp.packets_in > 30


async def test_operator_hangup(pbx, engine):
    rec = pbx.place_call(str(THANKS), hold_s=5.0)
    await wait_for(lambda: rec.bridged)
    assert await engine.hangup(rec.id)
    await asyncio.wait_for(rec.finished.wait(), 10)
    assert rec.ended_by == "ari" and rec.hangup_clean
    assert not await engine.hangup(rec.id)  # already gone


async def test_calls_over_max_calls_are_refused_and_counted(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, AIAGENT_MAX_CALLS="2") as eng:
        calls = [pbx.place_call(str(HELLO), hold_s=1.0, caller_number=f"30{i}") for i in range(3)]
        for rec in calls:
            await asyncio.wait_for(rec.finished.wait(), 15)
        bridged = [r for r in calls if r.bridged]
        refused = [r for r in calls if not r.bridged]
        assert len(bridged) == 2 and len(refused) == 1
        assert refused[0].ended_by == "ari"
        assert refused[0].external_media is None  # never got an ExternalMedia channel
        assert eng.store.calls_rejected_over_capacity == 1
        assert eng.health()["calls_rejected_over_capacity"] == 1


async def test_over_capacity_can_go_back_to_the_dialplan(pbx, tmp_path):
    def dialplan(cfg):
        cfg.asterisk.over_capacity = "dialplan"

    async with running_engine(pbx, tmp_path, dialplan, AIAGENT_MAX_CALLS="1"):
        first = pbx.place_call(str(THANKS), hold_s=1.0)
        await wait_for(lambda: first.bridged)
        second = pbx.place_call(str(HELLO), hold_s=1.0)
        await asyncio.wait_for(second.finished.wait(), 15)
        assert second.ended_by == "dialplan"
        assert ("channels.continueInDialplan", f"/channels/{second.id}/continue") in pbx.requests


async def test_one_calls_setup_failure_does_not_touch_another(tmp_path):
    # Room for exactly one ExternalMedia channel: the second call's setup fails.
    sim = SimPBX(rtp_start=21000, rtp_end=21001)
    await sim.start(port=0)
    try:
        async with running_engine(sim, tmp_path) as eng:
            first = sim.place_call(str(THANKS), hold_s=0.5)
            await wait_for(lambda: first.bridged)
            second = sim.place_call(str(HELLO), hold_s=0.5)
            await asyncio.wait_for(second.finished.wait(), 15)
            assert not second.bridged and second.ended_by == "ari"
            assert eng.store.calls_failed == 1
            # The first call carried on to its natural end, echo and all.
            await asyncio.wait_for(first.finished.wait(), 20)
            assert first.hangup_clean and first.media.agent_audio_seconds > 4.0
            assert sim.leftovers() == ([], [])
    finally:
        await sim.stop()
    assert sim.port_exhaustion_events == 1


async def test_dtmf_reaches_the_call_log(pbx, engine):
    sub = engine.store.subscribe()
    rec = pbx.place_call(str(THANKS), hold_s=0.5)
    await wait_for(lambda: rec.bridged)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pbx.url}/sim/calls/{rec.id}/dtmf", params={"digit": "5"}) as r:
            assert r.status == 200
    seen: list = []

    def got_dtmf() -> bool:
        seen.extend(_drain(sub))
        return any(isinstance(e, CallLog) and e.message.startswith("DTMF 5") for e in seen)

    await wait_for(got_dtmf)
    await engine.hangup(rec.id)


def _drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out
