"""Bringing a person into a call, over the simulator (Engine.bring_in, engine/handoff.py): the
person's phone is originated into the engine's app as Asterisk does it (pbxsim/people.py); when
they answer they are put with the caller and the agent leaves, or they listen in on a snoop
channel; when they cannot be reached the caller stays with the agent. Audio is checked both ways
at the phones, and nothing is left on the PBX afterwards. Also: a transfer the PBX drops is a
failed transfer in the history, not a success."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from engine.actions import RINGBACK, bring_in_line, introduction
from engine.calls import ORPHAN_GRACE_S
from engine.handoff import why_not_reached
from engine.history import outcome_of
from media.audio import ulaw_to_pcm16
from engine.sessions import ActionChanged, ActionRecord, CallSession, TranscriptAdded, TranscriptTurn
from pbxsim.people import SimPerson
from pbxsim.script import Pause, Say
from providers.profile import AgentProfile, Department
from tests.test_operator import scripted
from tests.test_simulator import AUTH
from tests.conftest import HELLO, THANKS, history_of, running_engine, wait_for

BILLING = Department(description="invoices", context="people", extension="301")
PERSON = "Local/301@people"
BY = "tester (local)"


def with_billing(cfg, ring_s: int = 30, **dept) -> None:
    cfg.profiles["default"] = AgentProfile(departments={"billing": BILLING.model_copy(update=dept)} if dept else {"billing": BILLING}, greeting="Hello.")
    cfg.actions.bring_in_ring_s = ring_s


def actions_of(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        if isinstance(e, ActionChanged):
            out.append(e.action)
    return out


async def streaming(eng, call_id: str) -> None:
    await wait_for(lambda: (s := eng.store.get(call_id)) is not None and s.bridged_at is not None, what="the call bridged with the agent")


def nothing_left(pbx) -> bool:
    return pbx.leftovers() == ([], []) and not [c for c in pbx.channels.values() if c.kind != "caller"]


@pytest.mark.parametrize("how", ["bridge", "introduce"])
async def test_a_person_who_answers_is_put_with_the_caller_and_the_agent_leaves(pbx, tmp_path, how):
    person = pbx.directory[PERSON] = SimPerson(script=[Pause(0.5), Say(str(THANKS))])
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(2.0), Say(str(HELLO)), Pause(1.0), Say(str(HELLO)), Pause(8.0)], caller_number="5550142")
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", how, BY)
        await wait_for(lambda: rec.id not in eng.calls.calls, what="the agent's part of the call ended")
        left_at = time.monotonic()
        ext = rec.external_media
        assert ext not in pbx.channels  # the agent's ExternalMedia channel is gone ...
        assert person.channel_id in pbx.channels and rec.id in pbx.channels  # ... the caller and the person are not
        b = pbx.bridges[rec.bridge_id]
        assert {pbx.channel_table.id_of_media(m) for m in b.members} == {rec.id, person.channel_id}
        # Audio both ways through the bridge: the person hears the caller, the caller the person.
        assert person.media is not None
        await wait_for(lambda: person.media.voice_heard_s(left_at) > 0.5, what="the person hears the caller")
        await wait_for(lambda: rec.media.voice_heard_s(left_at) > 1.0, what="the caller hears the person")
        assert rec.media.agent_heard_s(left_at + 0.1) == 0.0  # no agent any more
        hist = await history_of(eng, rec.id)
        assert hist.outcome == "brought_in" and hist.end_reason == "brought in billing (301@people)"
        assert [(a.kind, a.by, a.reason, a.department, a.state) for a in hist.actions] == [("bring_in", BY, how, "billing", "done")]
        # The caller hangs up: the person is hung up and the bridge goes.
        await asyncio.wait_for(rec.finished.wait(), 30)
        await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")
        assert rec.report(pbx)["hangup_clean"]
        await asyncio.wait_for(person.finished.wait(), 10)  # the simulated phone notices its hangup a moment after the channel goes
    # The caller's phone number went to the person's phone.
    assert not pbx.violations


async def test_the_person_hanging_up_ends_the_caller_too(pbx, tmp_path):
    person = pbx.directory[PERSON] = SimPerson(script=[Pause(1.0)], hang_up_after_script=True)
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(30.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "bridge", BY)
        await asyncio.wait_for(person.finished.wait(), 20)
        await asyncio.wait_for(rec.finished.wait(), 10)
        assert rec.report(pbx)["ended_by"] == "ari"
        await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")


@pytest.mark.parametrize(("answers", "why"), [("busy", "busy"), ("no_answer", "no answer in 5 s"), ("missing", "no such extension")])
async def test_a_person_not_reached_leaves_the_caller_with_the_agent(pbx, tmp_path, answers, why):
    if answers != "missing":
        pbx.directory[PERSON] = SimPerson(answers=answers)
    async with running_engine(pbx, tmp_path, lambda c: with_billing(c, ring_s=5)) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(9.0), Say(str(HELLO)), Pause(2.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "introduce", BY)
        got: list = []

        def failed_now():
            got.extend(actions_of(sub))
            return next((a for a in got if a.state == "failed"), None)

        failed = await wait_for(failed_now, timeout=15, what="the bring-in failed")
        assert failed.kind == "bring_in" and why in failed.detail, failed
        call = eng.calls.calls[rec.id]  # the caller is still the agent's ...
        assert call.actions.action is None and not call.conversation.held  # ... and listened to again
        # The echo agent answers the caller again: what they say comes back.
        heard_before = rec.media.agent_heard_s()
        await asyncio.wait_for(rec.finished.wait(), 30)
        assert rec.media.agent_heard_s() > heard_before + 0.5
        hist = await history_of(eng, rec.id)
        assert hist.outcome == "caller_hung_up"
        assert [(a.kind, a.state) for a in hist.actions][-1] == ("bring_in", "failed")
    assert nothing_left(pbx)


async def test_snoop_the_person_hears_both_sides_and_speaks_to_the_caller_the_agent_stays(pbx, tmp_path):
    person = pbx.directory[PERSON] = SimPerson(script=[Pause(1.0), Say(str(THANKS)), Say(str(THANKS))], hang_up_after_script=True)
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(4.0), Say(str(HELLO)), Pause(12.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "snoop", BY)
        await wait_for(lambda: person.bridged_at is not None, what="the person listening in")
        assert person.media is not None and not rec.media.said
        # The person hears the caller and the (echo) agent ...
        await wait_for(lambda: rec.media.said_end, what="the caller's hello")
        hello_end = rec.media.said_end[0]
        await wait_for(lambda: person.media.voice_heard_s(hello_end - 1.5) > 1.6, what="the person hears the caller and the agent")
        assert person.media.agent_heard_s() > 0.5
        # ... the caller hears the agent, and once its echo is over, the person's whisper alone (it
        # rides on the frames the caller's mixing bridge sends: with nothing sent it would be lost).
        await wait_for(lambda: rec.media.agent_heard_s(hello_end - 1.0) > 0.8, what="the caller hears the agent")
        await wait_for(lambda: rec.media.voice_heard_s(hello_end + 1.5) > 1.5, what="the caller hears the person")
        assert rec.id in eng.calls.calls  # the agent stays on
        await asyncio.wait_for(person.finished.wait(), 30)
        # The person hung up: the snoop, the quiet member and the snoop's bridge go; the call goes on.
        await wait_for(lambda: not [c for c in pbx.channels.values() if c.kind in ("snoop", "person")] and len(pbx.bridges) == 1)
        assert len([c for c in pbx.channels.values() if c.kind == "external"]) == 1
        assert rec.id in eng.calls.calls
        await asyncio.wait_for(rec.finished.wait(), 30)
        hist = await history_of(eng, rec.id)
    assert hist.outcome == "caller_hung_up"
    assert [(a.kind, a.reason, a.state) for a in hist.actions] == [("bring_in", "snoop", "done")]
    assert nothing_left(pbx)


async def test_the_call_ending_ends_a_snoop(pbx, tmp_path):
    person = pbx.directory[PERSON] = SimPerson()
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(3.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "snoop", BY)
        await wait_for(lambda: person.bridged_at is not None)
        await asyncio.wait_for(rec.finished.wait(), 20)
        await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")
        await asyncio.wait_for(person.finished.wait(), 10)  # the simulated phone notices its hangup a moment after the channel goes


async def test_bring_in_is_refused_for_an_unknown_department_or_way(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(3.0)])
        await streaming(eng, rec.id)
        assert not eng.bring_in(rec.id, "sales", "bridge", BY)
        assert not eng.bring_in(rec.id, "billing", "teleport", BY)  # type: ignore[arg-type]
        assert not eng.bring_in("no-such-call", "billing", "bridge", BY)
        assert [(a.kind, a.department, a.state) for a in eng.store.get(rec.id).actions] == [("bring_in", "sales", "refused")]


async def test_a_transfer_to_an_extension_the_dialplan_lacks_is_a_failed_transfer_in_the_history(pbx, tmp_path):
    def cfg(c):
        c.profiles["default"] = AgentProfile(departments={"billing": Department(context="from-internal", extension="9999")}, greeting="Hello.")

    async with running_engine(pbx, tmp_path, cfg) as eng:
        rec = pbx.place_call(script=[Pause(5.0)])
        await streaming(eng, rec.id)
        assert eng.transfer(rec.id, "billing")
        await asyncio.wait_for(rec.finished.wait(), 10)
        hist = await history_of(eng, rec.id, until=lambda r: r.actions[-1].state != "sent")
    assert hist.outcome == "transfer_failed", hist.outcome
    a = hist.actions[-1]
    assert (a.kind, a.state) == ("transfer", "failed")
    assert "no such extension" in a.detail and "9999@from-internal" in a.detail, a.detail


async def test_introduce_the_person_hears_the_agent_and_the_caller_does_not(pbx, tmp_path):
    """With the local models: the agent's introduction reaches the person (from the agent's
    ExternalMedia channel while the caller is out of the bridge), not the caller."""
    person = pbx.directory[PERSON] = SimPerson()
    async with running_engine(pbx, tmp_path, with_billing, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(30.0)], caller_number="5550142")
        await streaming(eng, rec.id)
        asked = time.monotonic()
        assert eng.bring_in(rec.id, "billing", "introduce", BY)
        await wait_for(lambda: rec.id not in eng.calls.calls, timeout=60, what="the agent's part ended")
        left = time.monotonic()
        line_s = eng.providers["local"].models.cache.get(bring_in_line("billing")).seconds
        got = []
        while (e := sub.get_nowait()) is not None:
            if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final:
                got.append(e.turn.text)
    intro = next(t for t in got if t.startswith("Hello, this is the assistant"))
    assert "5 5 5 0 1 4 2" in intro and "billing" in intro, intro
    assert person.media is not None and person.bridged_at is not None
    # The person heard the introduction (the agent's audio) ...
    assert person.media.agent_heard_s() > 2.0
    # ... the caller only the line before it.
    assert 0.5 < rec.media.agent_heard_s(asked) <= line_s + 0.1, (rec.media.agent_heard_s(asked), line_s)
    assert rec.media.agent_heard_s(person.bridged_at) == 0.0
    assert left > person.bridged_at


def ringing(payload: bytes) -> bool:
    """A frame of the ring tone (440 + 480 Hz): nearly all of its power between them (a 20 ms
    frame's resolution is 50 Hz, so the band is their main lobes); a voice spreads wider."""
    pcm = np.frombuffer(ulaw_to_pcm16(payload), np.int16).astype(np.float64)
    power = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)), 1600)) ** 2
    hz = np.fft.rfftfreq(1600, 1 / 8000)
    return bool(power.sum() > 0 and power[(hz >= 390) & (hz <= 530)].sum() > 0.9 * power.sum())


def ring_s(frames: list[tuple[float, bytes]], since: float, until: float = float("inf")) -> float:
    return 0.02 * sum(1 for t, p in frames if since <= t < until and ringing(p))


@pytest.mark.parametrize("how", ["bridge", "introduce"])
async def test_the_caller_hears_ringback_while_the_persons_phone_rings_and_is_introduced_then_the_person(pbx, tmp_path, how):
    person = pbx.directory[PERSON] = SimPerson(answer_after_s=3.0, script=[Pause(0.5), Say(str(THANKS))])
    async with running_engine(pbx, tmp_path, with_billing, AIAGENT_PROVIDER="tone") as eng:
        await scripted(eng, [])  # a pipeline that speaks its lines (0.6 s tones): the introduction is said
        rec = pbx.place_call(script=[Pause(30.0)], caller_number="5550142")
        await streaming(eng, rec.id)
        asked = time.monotonic()
        assert eng.bring_in(rec.id, "billing", how, BY)
        await wait_for(lambda: person.answered_at is not None, what="the person answering")
        answered = time.monotonic()
        await wait_for(lambda: rec.id not in eng.calls.calls, what="the agent's part ended")
        left = time.monotonic()
        await wait_for(lambda: rec.media.voice_heard_s(left) > 1.0, what="the caller hears the person")
        heard = rec.media.heard_voice
        # The ring cadence (2 s on) from when the person's phone starts ringing until they answer ...
        assert ring_s(heard, asked, answered) >= 1.5
        if how == "introduce":  # ... and again from the start while they are told who is calling
            assert ring_s(heard, answered, left) >= 0.3
        # ... then no more of it: the person's voice.
        last_ring = max(t for t, p in heard if ringing(p))
        assert last_ring <= left + 0.1
        assert ring_s(heard, left + 0.1) == 0.0
    # Every ringback was stopped (a ring tone never ends by itself).
    assert not [pb for pb, _ in pbx.playbacks.active.values() if pb.media_uri == RINGBACK]


async def test_the_simulator_rings_until_stopped_and_holds_a_removechannel_meanwhile_as_asterisk_does(pbx):
    """The simulator's side of the ringback, as measured on Asterisk 22: tone:ring on a channel
    plays the zone's ring cadence to that caller until stopped (DELETE /playbacks/ID), and a
    removeChannel of that channel answers only once the playback has ended."""
    async with aiohttp.ClientSession() as http:

        async def ari(method: str, path: str, **params: str) -> int:
            async with http.request(method, f"{pbx.url}/ari{path}", params=params, headers=AUTH) as r:
                return r.status

        ws = await http.ws_connect(f"{pbx.url}/ari/events?app=aiagent", headers=AUTH)
        await wait_for(lambda: pbx.app_active("aiagent"), what="the app connected")
        rec = pbx.place_call(script=[Pause(30.0)])
        await wait_for(lambda: (c := pbx.channel_table.by_id.get(rec.id)) is not None and c.in_stasis, what="the caller in Stasis")
        assert await ari("POST", "/bridges", type="mixing", bridgeId="b-ring") == 200
        assert await ari("POST", "/bridges/b-ring/addChannel", channel=rec.id) == 204
        assert await ari("POST", f"/channels/{rec.id}/play/ring-1", media=RINGBACK) == 201
        await wait_for(lambda: ring_s(rec.media.heard_voice, 0) >= 1.0, what="a second of ring heard")
        removing = asyncio.create_task(ari("POST", "/bridges/b-ring/removeChannel", channel=rec.id))
        await wait_for(lambda: ring_s(rec.media.heard_voice, 0) >= 1.9, what="the ring going on")
        assert not removing.done() and pbx.channel_table.by_id[rec.id].bridge is not None
        assert await ari("DELETE", "/playbacks/ring-1") == 204
        assert await asyncio.wait_for(removing, 5) == 204
        assert pbx.channel_table.by_id[rec.id].bridge is None
        assert await ari("DELETE", f"/channels/{rec.id}") == 204
        assert await ari("DELETE", "/bridges/b-ring") == 204
        await ws.close()
    assert not pbx.violations


def test_why_a_person_was_not_reached_in_words():
    # As measured on Asterisk 22 with Local channels (pbxsim/people.py's docstring).
    assert why_not_reached("BUSY", 0, "Unknown", 30) == "busy"
    assert why_not_reached("RINGING", 19, "User alerting, no answer", 30) == "no answer in 30 s"
    assert why_not_reached("", 0, "Unknown", 30) == "could not be called: no such extension or endpoint"
    assert why_not_reached("CHANUNAVAIL", 0, "", 30) == "unreachable (chanunavail)"
    assert why_not_reached("ANSWER", 16, "Normal Clearing", 30) == "hung up before answering (cause 16 Normal Clearing)"


def test_the_outcome_follows_what_asterisk_reported_of_the_transfer():
    t = ActionRecord(kind="transfer", by="agent", reason="", state="failed")
    assert outcome_of("transferred to billing (201@from-internal)", [t]) == "transfer_failed"
    t.state = "done"
    assert outcome_of("transferred to billing (201@from-internal)", [t]) == "transferred"
    assert outcome_of("brought in billing (301@people)", []) == "brought_in"


def test_the_introduction_says_who_is_calling_and_what_about():
    s = CallSession(call_id="c", caller_channel_id="c", caller_number="+1 555-0142", caller_name="Jane Doe")
    s.transcript.append(TranscriptTurn(role="caller", text="I was charged twice for my cleaning.", final=True, at=0.0))
    text = introduction(s, "billing")
    assert text.startswith("Hello, this is the assistant. I have Jane Doe, calling from 1 5 5 5 0 1 4 2, on the line for billing.")
    assert 'They said: "I was charged twice for my cleaning."' in text
    assert "a caller on the line" in introduction(CallSession(call_id="c", caller_channel_id="c"), "billing")


@pytest.mark.parametrize("who", ["caller", "engine"])
async def test_a_call_that_ends_while_the_persons_phone_rings_leaves_nothing(pbx, tmp_path, who):
    person = pbx.directory[PERSON] = SimPerson(answers="no_answer")
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(2.0 if who == "caller" else 30.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "bridge", BY)
        await wait_for(lambda: any(c.kind == "person" for c in pbx.channels.values()), what="the person's phone ringing")
        if who == "caller":
            await asyncio.wait_for(rec.finished.wait(), 20)
            await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")
    # Stopped while it rang: the engine hung the person's channel up too.
    await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")
    assert person.channel_id is None  # never answered
    hist = await history_of(eng, rec.id)
    assert [(a.kind, a.state, a.detail) for a in hist.actions] == [("bring_in", "failed", "the call ended while their phone rang")]


async def test_a_person_who_hangs_up_during_the_introduction_leaves_the_caller_with_the_agent(pbx, tmp_path):
    person = pbx.directory[PERSON] = SimPerson(script=[Pause(0.5)], hang_up_after_script=True)
    async with running_engine(pbx, tmp_path, with_billing, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(30.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "introduce", BY)
        got: list = []

        def settled():
            got.extend(actions_of(sub))
            return next((a for a in got if a.state in ("failed", "done")), None)

        a = await wait_for(settled, timeout=60, what="the bring-in's outcome")
        assert a.state == "failed" and "hung up during the introduction" in a.detail, a
        await asyncio.wait_for(person.finished.wait(), 10)  # the simulated phone notices its hangup a moment after the channel goes
        call = eng.calls.calls[rec.id]  # the caller is back with the agent, in its bridge
        assert rec.id in [pbx.channel_table.id_of_media(m) for m in pbx.bridges[rec.bridge_id].members]
        await wait_for(lambda: not call.conversation.held, what="the agent listening again")
        await pbx_hangup(pbx, rec)
        await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")


async def pbx_hangup(pbx, rec) -> None:
    pbx.hangup_channel(pbx.channels[rec.id], "caller")
    await asyncio.wait_for(rec.finished.wait(), 10)


async def test_an_ari_reconnect_keeps_the_caller_with_the_person(pbx, tmp_path):
    """After a reconnect the engine reconciles with what Asterisk holds: the caller and the person
    in Stasis are a connection of its own, not callers with no call behind them."""
    person = pbx.directory[PERSON] = SimPerson()
    async with running_engine(pbx, tmp_path, with_billing) as eng:
        rec = pbx.place_call(script=[Pause(6.0)])
        await streaming(eng, rec.id)
        assert eng.bring_in(rec.id, "billing", "bridge", BY)
        await wait_for(lambda: rec.id not in eng.calls.calls and len(eng.calls.desk.connections) == 1)
        connects = eng.events.connects
        await pbx.drop_websockets()
        await wait_for(lambda: eng.events.connects > connects and eng.events.connected, what="ARI reconnected")
        # What must not happen (an adoption of the caller or the person) would come ORPHAN_GRACE_S
        # after the reconcile: waited out, there being no event to wait for.
        await asyncio.sleep(ORPHAN_GRACE_S + 0.5)
        assert eng.calls.calls == {} and person.channel_id in pbx.channels and rec.id in pbx.channels
        await asyncio.wait_for(rec.finished.wait(), 20)
        await wait_for(lambda: nothing_left(pbx), what="no channel and no bridge left")
