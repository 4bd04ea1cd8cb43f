"""Several engines on one Asterisk: each its own Stasis app, RTP port and health port; the
dialplan spreads calls over them (here: the simulator's callers dial one app or the other)."""

from __future__ import annotations

import asyncio

from pbxsim.server import Broadcast
from tests.conftest import HELLO, running_engine, wait_for


async def test_two_engines_share_one_pbx_and_never_touch_each_others_calls(pbx, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_engine(pbx, tmp_path / "b", ARI_APP="aiagent-2", AIAGENT_PROVIDER="echo") as b:
        early = pbx.place_call(str(HELLO), hold_s=6.0, app="aiagent-2")  # on B while A starts
        await wait_for(lambda: len(b.store) == 1)
        # A connects and reconciles (it deletes leftovers of its own app, and only those).
        async with running_engine(pbx, tmp_path / "a", ARI_APP="aiagent-1", AIAGENT_PROVIDER="echo") as a:
            assert a.rtp.port != b.rtp.port and a.health_server.port != b.health_server.port
            calls = [pbx.place_call(str(HELLO), hold_s=2.5, app=f"aiagent-{1 + i % 2}") for i in range(4)]
            await wait_for(lambda: len(a.store) == 2 and len(b.store) == 3)
            assert {s.caller_channel_id for s in a.store} == {c.id for c in calls[0::2]}
            await asyncio.gather(*(asyncio.wait_for(c.finished.wait(), 30) for c in [*calls, early]))
            totals = (a.summary().calls_total, b.summary().calls_total)
    for rec in (*calls, early):
        report = rec.report(pbx)
        assert report["ended_by"] == "caller" and report["hangup_clean"], report
        assert rec.media.agent_heard_s() > 1.0  # each was echoed by the engine that took it
    assert totals == (2, 3)
    assert pbx.leftovers() == ([], [])


async def test_stasis_broadcast_spreads_calls_to_engines_with_room(pbx, tmp_path):
    """StasisBroadcast(): each engine claims an offered call only with room for it and a provider
    ready; the least loaded tends to win; a call nobody can take goes back to the dialplan."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def one_call_each(cfg):
        cfg.rtp.max_calls = 2

    async with (
        running_engine(pbx, tmp_path / "a", one_call_each, ARI_APP="aiagent-1", AIAGENT_PROVIDER="echo") as a,
        running_engine(pbx, tmp_path / "b", one_call_each, ARI_APP="aiagent-2", AIAGENT_PROVIDER="echo") as b,
    ):
        calls = []
        for _ in range(4):  # one at a time: each offer sees the engines' load after the last claim
            calls.append(pbx.place_call(str(HELLO), hold_s=3.0, broadcast=Broadcast(timeout_ms=500)))
            await wait_for(lambda: len(a.store) + len(b.store) == len(calls))
        assert len(a.store) == 2 and len(b.store) == 2  # spread, each to its max_calls
        full = pbx.place_call(str(HELLO), hold_s=1.0, broadcast=Broadcast(timeout_ms=500))
        await asyncio.wait_for(full.finished.wait(), 15)
        assert not full.accepted and "STASISSTATUS=TIMEOUT" in (full.error or "")
        await asyncio.gather(*(asyncio.wait_for(c.finished.wait(), 30) for c in calls))
        # A filter that offers it to one engine only: that one takes it.
        only_b = pbx.place_call(str(HELLO), hold_s=1.0, broadcast=Broadcast(app_filter="-2$"))
        await wait_for(lambda: len(b.store) == 1)
        assert len(a.store) == 0
        await asyncio.wait_for(only_b.finished.wait(), 30)
    for rec in (*calls, only_b):
        report = rec.report(pbx)
        assert report["ended_by"] == "caller" and report["hangup_clean"], report
        assert rec.media.agent_heard_s() > 1.0
    assert pbx.leftovers() == ([], [])


async def test_an_engine_that_cannot_answer_leaves_broadcast_calls_to_the_others(pbx, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)  # engine 1's provider is not ready, and it has no fallback
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        running_engine(pbx, tmp_path / "a", ARI_APP="aiagent-1", AIAGENT_PROVIDER="deepgram") as a,
        running_engine(pbx, tmp_path / "b", ARI_APP="aiagent-2", AIAGENT_PROVIDER="echo") as b,
    ):
        assert not a.takes_new_calls() and b.takes_new_calls()
        calls = [pbx.place_call(str(HELLO), hold_s=1.0, broadcast=Broadcast()) for _ in range(3)]
        await asyncio.gather(*(asyncio.wait_for(c.finished.wait(), 30) for c in calls))
        assert a.summary().calls_total == 0 and b.summary().calls_total == 3
    assert all(c.accepted and c.media.agent_heard_s() > 1.0 for c in calls)
