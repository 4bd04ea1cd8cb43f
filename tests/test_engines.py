"""Several engines on one Asterisk: each its own Stasis app, RTP port and health port; the
dialplan spreads calls over them (here: the simulator's callers dial one app or the other)."""

from __future__ import annotations

import asyncio

from tests.conftest import HELLO, running_engine, wait_for


async def test_two_engines_share_one_pbx_and_never_touch_each_others_calls(pbx, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_engine(pbx, tmp_path / "b", ARI_APP="aiagent-2", AIAGENT_PROVIDER="echo") as b:
        early = pbx.place_call(str(HELLO), hold_s=6.0, app="aiagent-2")  # on B while A starts
        await wait_for(lambda: len(b.store) == 1, timeout=10)
        # A connects and reconciles (it deletes leftovers of its own app, and only those).
        async with running_engine(pbx, tmp_path / "a", ARI_APP="aiagent-1", AIAGENT_PROVIDER="echo") as a:
            assert a.rtp.port != b.rtp.port and a.health_server.port != b.health_server.port
            calls = [pbx.place_call(str(HELLO), hold_s=2.5, app=f"aiagent-{1 + i % 2}") for i in range(4)]
            await wait_for(lambda: len(a.store) == 2 and len(b.store) == 3, timeout=10)
            assert {s.caller_channel_id for s in a.store} == {c.id for c in calls[0::2]}
            await asyncio.gather(*(asyncio.wait_for(c.finished.wait(), 30) for c in [*calls, early]))
            totals = (a.health()["calls_total"], b.health()["calls_total"])
    for rec in (*calls, early):
        report = rec.report(pbx)
        assert report["ended_by"] == "caller" and report["hangup_clean"], report
        assert rec.media.agent_heard_s() > 1.0  # each was echoed by the engine that took it
    assert totals == (2, 3)
    assert pbx.leftovers() == ([], [])
