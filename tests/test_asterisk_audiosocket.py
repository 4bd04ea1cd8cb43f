"""AudioSocket end to end on the real Asterisk 22 (../shared/asterisk/): the engine's AudioSocket
server, both forms (an ExternalMedia channel: chan_audiosocket; a Local channel whose other half
runs the dialplan's AudioSocket(): app_audiosocket, pbxsim/asterisk_etc/extensions.conf's
[aiagent-audiosocket]), callers placed through the PBX's own dialplan (pbxsim/asterisk.py), what
they hear taken at the caller's side. After every test nothing is left on the PBX (the ``callers``
fixture), in the engine's AudioSocket server, or in its media folder."""

from __future__ import annotations

import asyncio

import pytest

from engine.audiosocket import AudioSocketTransport
from engine.sessions import ActionChanged, BargeIn, CallLog
from pbxsim.script import Dtmf, Pause, Say, WaitAgent
from providers.profile import AgentProfile
from tests.conftest import AGENT_PASS, HELLO, history_of, running_engine, wait_for
from tests.test_asterisk import BILLING, QUESTION, drain, greeted_and_answered, ended, global_var_set, media_empty, whisper  # noqa: F401

pytestmark = pytest.mark.asterisk

FORMS = pytest.mark.parametrize("form", ["channel", "dialplan"])
MODES = pytest.mark.parametrize("mode", ["stream", "file"])


def audiosocket(form: str, profile: AgentProfile | None = None):
    def configure(cfg) -> None:
        cfg.media.transport = "audiosocket"
        cfg.audiosocket.port = 0
        cfg.audiosocket.form = form
        if profile is not None:
            cfg.profiles["default"] = profile

    return configure


def transport(eng) -> AudioSocketTransport:
    t = eng.transports["audiosocket"]
    assert isinstance(t, AudioSocketTransport)
    return t


async def engine_clean(eng) -> None:
    t = transport(eng)
    await wait_for(lambda: len(eng.store) == 0 and eng.calls.calls == {})
    await wait_for(lambda: not t.conns and not t.links, what="no AudioSocket connection left")
    st = t.status()
    assert st.malformed == 0 and st.unknown == 0, st


@FORMS
@MODES
async def test_echo_over_audiosocket_heard_and_cleaned(asterisk, callers, tmp_path, form, mode):
    async with running_engine(asterisk, tmp_path, audiosocket(form), AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        call = callers.place_call([Pause(1.0), Say(str(AGENT_PASS)), Pause(2.0)])
        await wait_for(lambda: eng.store.get(call.far_channel) is not None and eng.store.get(call.far_channel).bridged_at is not None)
        session = eng.store.get(call.far_channel)
        await wait_for(lambda: session.stream_in.frames > 50, what="the caller's audio over the AudioSocket")
        snap = eng.store.snapshot(call.far_channel)
        await ended(call)
        assert call.answered and call.bridged and call.ended_by == "caller"
        # The echo (500 ms late) of 3.3 s of speech came back through the AudioSocket and both bridges.
        assert call.agent_audio_seconds > 2.0, call.report()
        assert snap is not None and snap.transport == "audiosocket" and snap.media_remote.endswith("/tcp")
        assert snap.rtp.packets_in > 50 and snap.rtp.malformed == 0
        await engine_clean(eng)
        # Asterisk's end: the connection ended with the call, and the engine counted no cut.
        assert transport(eng).status().cut == 0
    assert media_empty(tmp_path)


@FORMS
async def test_hangup_both_ways(asterisk, callers, tmp_path, form):
    async with running_engine(asterisk, tmp_path, audiosocket(form)) as eng:
        a = callers.place_call([Pause(20)], caller_number="811")
        b = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(0.5)], caller_number="812")
        await wait_for(lambda: a.far_channel in eng.calls.calls)
        await ended(b)
        assert b.ended_by == "caller"
        await wait_for(lambda: eng.store.get(a.far_channel) is not None and eng.store.get(a.far_channel).bridged_at is not None)
        assert await eng.hangup(a.far_channel)
        await ended(a, 10)
        assert a.ended_by == "agent"
        rec = await history_of(eng, a.far_channel)
        assert rec.outcome != "live"
        await engine_clean(eng)
    assert media_empty(tmp_path)


@FORMS
async def test_asterisk_hanging_up_the_media_channel_ends_the_call(asterisk, callers, tmp_path, form):
    """The media channel goes on Asterisk's side (an admin's hangup, the AudioSocket() line
    failing): the socket ends, the call ends with it, and nothing is left."""
    async with running_engine(asterisk, tmp_path, audiosocket(form)) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(20)])
        await wait_for(lambda: eng.store.get(call.far_channel) is not None and eng.store.get(call.far_channel).bridged_at is not None)
        ext = eng.store.get(call.far_channel).external_channel_id
        # The dialplan form's AudioSocket() runs on the Local pair's other half.
        await callers.ari.request("DELETE", f"/channels/{ext};2" if form == "dialplan" else f"/channels/{ext}")
        await ended(call, 10)
        assert call.ended_by == "agent"
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == call.far_channel]
        assert any("call ended" in m for m in logs), logs
        await engine_clean(eng)


async def test_the_dialplan_forms_local_pair_is_the_calls_after_a_reconcile(asterisk, callers, tmp_path):
    """After an ARI reconnect the engine deletes channels of its naming that no call owns: the
    dialplan form's Local pair (ID and ID;2) is the call's, and the call goes on."""
    async with running_engine(asterisk, tmp_path, audiosocket("dialplan")) as eng:
        call = callers.place_call([Pause(2.0), Say(str(HELLO)), Pause(1.5)])
        await wait_for(lambda: eng.store.get(call.far_channel) is not None and eng.store.get(call.far_channel).bridged_at is not None)
        ext = eng.store.get(call.far_channel).external_channel_id
        assert any(c["id"] == f"{ext};2" for c in await callers.ari.channels())
        await eng.calls.reconcile(reconnect=True)
        await ended(call, 20)
        assert call.ended_by == "caller" and call.agent_audio_seconds > 0.8, call.report()
        await engine_clean(eng)


@FORMS
async def test_a_quiet_call_stays_up(asterisk, callers, tmp_path, form):
    """Neither side sends anything for seconds (a DTX caller, an agent with nothing to say):
    app_audiosocket hangs up after 2 s with no frame either way, the engine's keepalive keeps
    the dialplan form's call up."""
    async with running_engine(asterisk, tmp_path, audiosocket(form)) as eng:
        call = callers.place_call([Pause(5.0), Say(str(HELLO)), Pause(1.5)])
        await ended(call, 20)
        assert call.ended_by == "caller" and call.agent_audio_seconds > 0.8, call.report()
        await engine_clean(eng)


@FORMS
async def test_keypad_transfer_over_audiosocket(asterisk, callers, tmp_path, form):
    profile = AgentProfile(departments={"billing": BILLING}, greeting="")
    async with running_engine(asterisk, tmp_path, audiosocket(form, profile)) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(1.5), Dtmf("1"), Pause(12)], caller_number="4101")
        assert await global_var_set(callers.ari, "TRANSFERRED_4101") == "201"
        await wait_for(lambda: len(eng.calls.calls) == 0)
        transferred_at = asyncio.get_running_loop().time()
        await wait_for(lambda: call.agent_heard_s(transferred_at) > 1.0 or call.finished.is_set())
        settled: list = []

        def transfer_settled() -> bool:
            got = drain(sub)
            settled.extend(e.action for e in got if isinstance(e, ActionChanged) and e.action.state in ("done", "failed"))
            return bool(settled)

        await wait_for(transfer_settled)
        assert settled[0].kind == "transfer" and settled[0].state == "done", settled[0]
        assert not call.finished.is_set()
        await callers.hangup(call)
        rec = await history_of(eng, call.far_channel)
        assert rec.outcome == "transferred", rec.outcome
        await engine_clean(eng)
    assert media_empty(tmp_path)


@FORMS
@MODES
async def test_greeting_heard_and_question_answered_with_the_local_models(asterisk, callers, tmp_path, whisper, form, mode):  # noqa: F811
    async with running_engine(asterisk, tmp_path, audiosocket(form), AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call(QUESTION)
        await ended(call, 90)
        events = drain(sub)
        await engine_clean(eng)
    greeted_and_answered(events, call, whisper)
    assert media_empty(tmp_path)


@FORMS
@MODES
async def test_barge_in_stops_the_agent_at_the_caller(asterisk, callers, tmp_path, form, mode):
    profile = AgentProfile(greeting="Hello and welcome to the northside dental practice. We are open from eight in the morning "
                                    "until six in the evening, Monday to Friday. How can I help you today?")
    async with running_engine(asterisk, tmp_path, audiosocket(form, profile), AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([WaitAgent(1.5), Say(str(AGENT_PASS)), Pause(2.0)])
        await ended(call, 60)
        events = drain(sub)
        await engine_clean(eng)
    assert any(isinstance(e, BargeIn) for e in events)
    reactions = call.barge_in_reactions()
    assert reactions and reactions[0] < 0.6, call.report()



