"""The agent's actions, end to end over the simulator with the local models: a caller asks for a
department (in words or on the keypad) and is transferred, says goodbye and is hung up after the
closing line, stays silent and is asked, then hung up. The simulator takes the caller out of
Stasis as a real Asterisk does (BEHAVIOUR.md), and every request and event is checked against
Asterisk's own api-docs."""

from __future__ import annotations

import asyncio

import pytest

from engine.sessions import ActionChanged, TranscriptAdded
from pbxsim.script import Dtmf, Pause, Say, SayText, WaitAgentDone
from providers.profile import AgentProfile, Department
from tests.conftest import HELLO, history_of, running_engine, wait_for

BILLING = Department(description="invoices, payments and refunds", digit="1", context="from-internal", extension="201")
OPERATOR = Department(description="the front desk", context="from-internal", extension="0")


def reception(cfg, **profile) -> None:
    cfg.profiles["default"] = AgentProfile(
        facts="Northside Dental, 14 Harbour Street. Open Monday to Friday 8 am to 6 pm.",
        departments={"billing": BILLING, "operator": OPERATOR},
        **profile,
    )


def local_engine(pbx, tmp_path, mode="stream", **profile):
    return running_engine(pbx, tmp_path, lambda c: reception(c, **profile), AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode)


def line_seconds(eng, text: str) -> float:
    """How long a fixed line of the agent's is (the provider synthesized it at startup)."""
    return eng.providers["local"].models.cache.get(text).seconds


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


def agent_lines(events) -> list[str]:
    return [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final]


def actions(events) -> list[tuple[str, str, str]]:
    return [(e.action.kind, e.action.department, e.action.state) for e in events if isinstance(e, ActionChanged)]


def assert_transferred_cleanly(pbx, rec, where: str) -> None:
    r = rec.report(pbx)
    assert r["left_stasis"] == f"continue to {where}" and r["transferred_to"] == where
    # The engine deleted its ExternalMedia channel and bridge, never the transferred caller.
    assert r["hangup_clean"] and r["ended_by"] == "caller"
    ops = [op for op, path in pbx.requests]
    assert ops.index("applications.subscribe") < ops.index("channels.continueInDialplan")
    assert not any(op == "channels.hangup" and rec.id in path for op, path in pbx.requests)
    assert "channels.move" not in ops


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_caller_asks_for_a_department_and_is_transferred_after_the_announcement(pbx, tmp_path, mode):
    async with local_engine(pbx, tmp_path, mode) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4), SayText("Can you put me through to billing, please?"), Pause(6.0)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        got: list = []
        await wait_for(lambda: ("transfer", "billing", "done") in actions(drain_into(sub, got)), timeout=5)
        announced_s = line_seconds(eng, "Putting you through to billing now.")
    assert_transferred_cleanly(pbx, rec, "201@from-internal")
    assert "Putting you through to billing now." in agent_lines(got)
    # The announcement played to its end before the caller left.
    heard = rec.media.agent_heard_s(rec.media.said_end[-1])
    assert heard >= announced_s - 0.04, (heard, announced_s)
    assert max(t for t, _ in rec.media.agent_frames) <= rec.left_stasis_at + 0.05
    assert eng.status().actions == (("transfer", "done", 1),)
    # The transfer's outcome is known 2 s after the caller left (the PBX did not drop them): the
    # record is written again then.
    hist = await history_of(eng, rec.id, until=lambda r: bool(r.actions) and r.actions[0].state != "sent")
    assert hist.outcome == "transferred" and hist.end_reason == "transferred to billing (201@from-internal)"
    assert [(a.kind, a.department, a.target, a.state) for a in hist.actions] == [("transfer", "billing", "201@from-internal", "done")]
    # What the caller said is kept as Whisper wrote it ("through the building", some days).
    assert "put me through" in " ".join(t.text for t in hist.transcript if t.role == "caller").lower()



def drain_into(sub, out: list) -> list:
    out.extend(drain(sub))
    return out


async def test_a_keypad_digit_transfers_and_a_missing_target_is_reported_failed(pbx, tmp_path):
    pbx.dialplan["from-internal"].discard("201")  # billing's extension does not exist on this PBX
    async with local_engine(pbx, tmp_path) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4), Dtmf("1"), Pause(6.0)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        got: list = []
        await wait_for(lambda: ("transfer", "billing", "failed") in actions(drain_into(sub, got)), timeout=5)
        metrics = eng.metrics.render().decode()
    r = rec.report(pbx)
    assert r["left_stasis"] == "continue to 201@from-internal" and r["transferred_to"] is None
    assert r["ended_by"] == "dialplan" and r["hangup_clean"]  # the PBX dropped the caller
    failed = next(e.action for e in got if isinstance(e, ActionChanged) and e.action.state == "failed")
    assert failed.by == "keypad" and "201@from-internal" in failed.detail
    assert 'ai_agent_actions_total{action="transfer",outcome="failed"} 1.0' in metrics


async def test_goodbye_is_answered_with_the_closing_line_then_a_hangup(pbx, tmp_path):
    async with local_engine(pbx, tmp_path) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4), SayText("Okay, that's all, thank you. Goodbye!"), Pause(10.0)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        got = drain(sub)
        closing_s = line_seconds(eng, "Thank you for calling. Goodbye!")
    r = rec.report(pbx)
    assert r["ended_by"] == "ari" and r["hangup_cause"] == 16 and r["hangup_clean"]
    assert agent_lines(got)[-1] == "Thank you for calling. Goodbye!"
    # The closing line was heard whole before the hangup.
    assert rec.media.agent_heard_s(rec.media.said_end[-1]) >= closing_s - 0.04
    assert rec.ended_at - max(t for t, _ in rec.media.agent_frames) < 0.5
    assert ("hangup", "", "done") in actions(got)
    hist = await history_of(eng, rec.id)
    assert hist.outcome == "agent_hung_up" and hist.transcript[-1].text == "Thank you for calling. Goodbye!"


async def test_a_silent_caller_is_asked_then_hung_up(pbx, tmp_path):
    async with local_engine(pbx, tmp_path, silence_prompt_s=1.5, silence_hangup_s=1.5) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(20.0)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        got = drain(sub)
        metrics = eng.metrics.render().decode()
    lines = agent_lines(got)
    assert lines[-2:] == ["Are you still there?", "Thank you for calling. Goodbye!"]
    r = rec.report(pbx)
    assert r["ended_by"] == "ari" and r["hangup_clean"]
    call_s = rec.ended_at - rec.placed_at
    assert call_s < 12, call_s  # greeting, 1.5 s, the question, 1.5 s, the closing line: not the 20 s
    assert 'ai_agent_actions_total{action="still_there",outcome="done"} 1.0' in metrics
    silence = next(e.action for e in got if isinstance(e, ActionChanged) and e.action.kind == "hangup")
    assert silence.by == "silence"


async def test_a_caller_who_answers_is_not_hung_up(pbx, tmp_path):
    # The caller answers 2 s after "Are you still there?" ends, 1.5 s before the hangup would come
    # (with 0.5 s, their answer's breath and first syllable decided it). A recorded answer: one the
    # simulator synthesizes at that moment starts a second late on a loaded machine, past the hangup.
    async with local_engine(pbx, tmp_path, silence_prompt_s=1.5, silence_hangup_s=3.5) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(2.0), Say(str(HELLO)), WaitAgentDone(1.0), Pause(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        got = drain(sub)
    assert "Are you still there?" in agent_lines(got)
    assert rec.report(pbx)["ended_by"] == "caller"
    assert not [a for a in actions(got) if a[0] == "hangup"]


async def test_the_operator_transfers_and_the_guard_refuses_other_targets(pbx, tmp_path):
    async with local_engine(pbx, tmp_path) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4), Pause(8.0)])
        await wait_for(lambda: eng.store.get(rec.id) is not None and eng.store.get(rec.id).state.value == "streaming", timeout=20)
        assert not eng.transfer(rec.id, "sales")  # not a department of this profile
        assert eng.transfer(rec.id, "operator")
        await asyncio.wait_for(rec.finished.wait(), 30)
        got = drain(sub)
    assert ("transfer", "sales", "refused") in actions(got)
    assert_transferred_cleanly(pbx, rec, "0@from-internal")
