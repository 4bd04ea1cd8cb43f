"""A site whose dialplan runs AudioSocket() instead of Stasis (audiosocket.dialplan_calls = true), on
the real Asterisk 22 (../shared/asterisk/): callers placed into pbxsim/asterisk_etc/extensions.conf's
[aiagent-audiosocket-direct] (Answer, AudioSocket(${UUID()},SERVER), GotoIf on
${SHARED(AIAGENT_TRANSFER)}, a global noting the dialplan went on, Hangup), the engine's server
address in the global AIAGENT_AUDIOSOCKET_DIRECT. What the callers hear is taken at their side.
After every test nothing is left on the PBX (the ``callers`` fixture), in the engine's AudioSocket
server, or in the app's subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest

from engine.audiosocket import AudioSocketTransport
from engine.engine import Engine
from engine.sessions import ActionChanged, BargeIn, CallLog
from pbxsim.asterisk import AsteriskCallers, AsteriskInstance
from pbxsim.script import Dtmf, Pause, Say, WaitAgent
from providers.profile import AgentProfile
from tests.conftest import AGENT_PASS, HELLO, history_of, running_engine, wait_for
from tests.test_asterisk import BILLING, QUESTION, drain, greeted_and_answered, ended, global_var_set, media_empty

pytestmark = pytest.mark.asterisk

CONTEXT = "aiagent-audiosocket-direct"


def transport(eng: Engine) -> AudioSocketTransport:
    t = eng.transports["audiosocket"]
    assert isinstance(t, AudioSocketTransport)
    return t


@contextlib.asynccontextmanager
async def direct_engine(asterisk: AsteriskInstance, callers: AsteriskCallers, tmp_path, profile: AgentProfile | None = None,
                        dialplan_calls: bool = True, **env: str) -> AsyncIterator[Engine]:
    """An engine whose media.transport stays RTP: its AudioSocket server runs for dialplan_calls."""

    def configure(cfg) -> None:
        cfg.audiosocket.port = 0
        cfg.audiosocket.dialplan_calls = dialplan_calls
        if not dialplan_calls:
            cfg.media.transport = "audiosocket"  # the server runs, strangers are refused
        if profile is not None:
            cfg.profiles["default"] = profile

    async with running_engine(asterisk, tmp_path, configure, **env) as eng:
        assert transport(eng).running
        await callers.ari.request("POST", "/asterisk/variable", variable="AIAGENT_AUDIOSOCKET_DIRECT", value=transport(eng).external_host)
        yield eng


async def engine_clean(eng: Engine, callers: AsteriskCallers) -> None:
    t = transport(eng)
    await wait_for(lambda: len(eng.store) == 0 and eng.calls.calls == {} and not eng.calls.dialplan.tokens)
    await wait_for(lambda: not t.conns and not t.links, what="no AudioSocket connection left")
    app = await callers.ari.request("GET", f"/applications/{eng.config.asterisk.app}")
    assert app["channel_ids"] == [], app


def streaming(eng: Engine, call_id: str | None) -> bool:
    s = eng.store.get(call_id or "")
    return s is not None and s.bridged_at is not None


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_echo_call_from_the_dialplans_audiosocket(asterisk, callers, tmp_path, mode):
    async with direct_engine(asterisk, callers, tmp_path, AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(1.0), Say(str(AGENT_PASS)), Pause(2.0)], context=CONTEXT, caller_number="4301", dialled="100")
        await wait_for(lambda: streaming(eng, call.far_channel))
        s = eng.store.get(call.far_channel)
        assert s is not None
        # The caller's own channel, found over ARI by its UUID; no bridge, no media channel.
        assert s.caller_number == "4301" and s.dialled == "100" and s.caller_channel_name.endswith(";2"), s
        assert s.bridge_id is None and s.external_channel_id is None and s.transport == "audiosocket"
        assert s.media_remote.startswith("dialplan AudioSocket()"), s.media_remote
        app = await callers.ari.request("GET", f"/applications/{eng.config.asterisk.app}")
        assert call.far_channel in app["channel_ids"]  # subscribed: its hangup is seen over ARI
        await wait_for(lambda: s.stream_in.frames > 50, what="the caller's audio over the AudioSocket")
        await ended(call)
        assert call.ended_by == "caller"
        # The echo (500 ms late) of 3.3 s of speech came back over the dialplan's AudioSocket().
        assert call.agent_audio_seconds > 2.0, call.report()
        rec = await history_of(eng, call.far_channel)
        assert rec.outcome == "caller_hung_up" and rec.caller_number == "4301", rec
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == call.far_channel]
        assert any("through the dialplan's AudioSocket()" in m for m in logs), logs
        assert any("file playback refused" in m for m in logs) == (mode == "file"), logs
        await engine_clean(eng, callers)
        st = transport(eng).status()
        assert st.malformed == 0 and st.unknown == 0, st
    assert media_empty(tmp_path)


async def test_hangup_by_the_agent_and_by_the_caller(asterisk, callers, tmp_path):
    async with direct_engine(asterisk, callers, tmp_path) as eng:
        a = callers.place_call([Pause(20)], context=CONTEXT, caller_number="4311")
        b = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(0.5)], context=CONTEXT, caller_number="4312")
        await ended(b)
        assert b.ended_by == "caller"
        await wait_for(lambda: streaming(eng, a.far_channel))
        assert await eng.hangup(a.far_channel)
        await ended(a, 10)
        assert a.ended_by == "agent"
        # The hangup message returned AudioSocket(): the dialplan went on to its next lines.
        assert await global_var_set(callers.ari, "AFTER_AUDIOSOCKET_4311") == "100"
        assert (await history_of(eng, a.far_channel)).outcome == "operator_hung_up"
        assert (await history_of(eng, b.far_channel)).outcome == "caller_hung_up"
        assert await callers.ari.global_var("AFTER_AUDIOSOCKET_4312") == ""  # hung up: no dialplan after
        await engine_clean(eng, callers)


async def test_a_quiet_call_stays_up(asterisk, callers, tmp_path):
    """Neither side sends anything for seconds (a DTX caller, an echo with nothing to repeat):
    app_audiosocket gives up after 2 s with no frame either way, the engine's keepalive keeps it up."""
    async with direct_engine(asterisk, callers, tmp_path) as eng:
        call = callers.place_call([Pause(5.0), Say(str(HELLO)), Pause(1.5)], context=CONTEXT)
        await ended(call, 20)
        assert call.ended_by == "caller" and call.agent_audio_seconds > 0.8, call.report()
        await engine_clean(eng, callers)


async def test_silent_caller_is_asked_then_the_agent_says_goodbye(asterisk, callers, tmp_path):
    """The silence watchdog on such a call: the agent's closing line, then the hangup message; the
    dialplan goes on."""
    profile = AgentProfile(silence_prompt_s=1.0, silence_hangup_s=1.0)
    async with direct_engine(asterisk, callers, tmp_path, profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(30)], context=CONTEXT, caller_number="4321")
        await ended(call, 30)
        assert call.ended_by == "agent"
        assert await global_var_set(callers.ari, "AFTER_AUDIOSOCKET_4321") == "100"
        rec = await history_of(eng, call.far_channel)
        assert rec.outcome == "agent_hung_up", rec.outcome
        acts = [e.action for e in drain(sub) if isinstance(e, ActionChanged)]
        assert any(a.kind == "hangup" and a.state == "done" and a.by == "silence" for a in acts), acts
        assert call.agent_heard_s() > 2.0, call.report()  # the greeting, "are you still there?", the closing line
        await engine_clean(eng, callers)


async def test_keypad_transfer_lands_at_the_target(asterisk, callers, tmp_path):
    profile = AgentProfile(departments={"billing": BILLING}, greeting="")
    async with direct_engine(asterisk, callers, tmp_path, profile) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(1.5), Dtmf("1"), Pause(12)], context=CONTEXT, caller_number="4331")
        assert await global_var_set(callers.ari, "TRANSFERRED_4331") == "201"
        await wait_for(lambda: len(eng.calls.calls) == 0)
        transferred_at = asyncio.get_running_loop().time()
        await wait_for(lambda: call.agent_heard_s(transferred_at) > 1.0 or call.finished.is_set(), what="the target's prompt heard")
        settled: list = []

        def transfer_settled() -> bool:
            got = drain(sub)
            settled.extend(e.action for e in got if isinstance(e, ActionChanged) and e.action.state in ("done", "failed"))
            return bool(settled)

        await wait_for(transfer_settled)
        assert settled[0].kind == "transfer" and settled[0].state == "done" and settled[0].by == "keypad", settled[0]
        assert not call.finished.is_set()
        assert await callers.ari.global_var("AFTER_AUDIOSOCKET_4331") == ""  # GotoIf took it away
        await callers.hangup(call)
        rec = await history_of(eng, call.far_channel)
        assert rec.outcome == "transferred", rec.outcome
        await engine_clean(eng, callers)


async def test_bring_in_is_refused_and_the_call_goes_on(asterisk, callers, tmp_path):
    profile = AgentProfile(departments={"billing": BILLING}, greeting="")
    async with direct_engine(asterisk, callers, tmp_path, profile) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(2.0), Say(str(HELLO)), Pause(1.5)], context=CONTEXT, caller_number="4341")
        await wait_for(lambda: streaming(eng, call.far_channel))
        assert not eng.bring_in(call.far_channel, "billing", "bridge", "operator")
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == call.far_channel]
        assert any("refused" in m and "no bridge" in m for m in logs), logs
        await ended(call, 20)
        assert call.ended_by == "caller" and call.agent_audio_seconds > 0.8, call.report()
        await engine_clean(eng, callers)


async def test_carried_across_a_reconcile(asterisk, callers, tmp_path):
    """After an ARI reconnect the call, with no bridge and no media channel, is not lost, and its
    caller's channel (not in Stasis) is not deleted."""
    async with direct_engine(asterisk, callers, tmp_path) as eng:
        call = callers.place_call([Pause(2.0), Say(str(HELLO)), Pause(1.5)], context=CONTEXT)
        await wait_for(lambda: streaming(eng, call.far_channel))
        await eng.calls.reconcile(reconnect=True)
        await ended(call, 20)
        assert call.ended_by == "caller" and call.agent_audio_seconds > 0.8, call.report()
        assert (await history_of(eng, call.far_channel)).outcome == "caller_hung_up"
        await engine_clean(eng, callers)


async def test_strangers_refused_without_dialplan_calls(asterisk, callers, tmp_path):
    async with direct_engine(asterisk, callers, tmp_path, dialplan_calls=False) as eng:
        call = callers.place_call([Pause(10)], context=CONTEXT, caller_number="4351")
        # Refused with a hangup message: AudioSocket() returns and the dialplan goes on.
        assert await global_var_set(callers.ari, "AFTER_AUDIOSOCKET_4351") == "100"
        await ended(call, 10)
        assert eng.calls.calls == {} and transport(eng).status().unknown == 1
        await wait_for(lambda: not transport(eng).conns)


async def test_greeting_heard_and_question_answered_with_the_local_models(asterisk, callers, tmp_path):
    async with direct_engine(asterisk, callers, tmp_path, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call(QUESTION, context=CONTEXT)
        await ended(call, 90)
        events = drain(sub)
        await engine_clean(eng, callers)
    greeted_and_answered(events, call)
    assert call.agent_heard_s() > 1.0, call.report()


async def test_barge_in_stops_the_agent_at_the_caller(asterisk, callers, tmp_path):
    profile = AgentProfile(greeting="Hello and welcome to the northside dental practice. We are open from eight in the morning "
                                    "until six in the evening, Monday to Friday. How can I help you today?")
    async with direct_engine(asterisk, callers, tmp_path, profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([WaitAgent(1.5), Say(str(AGENT_PASS)), Pause(2.0)], context=CONTEXT)
        await ended(call, 60)
        events = drain(sub)
        await engine_clean(eng, callers)
    assert any(isinstance(e, BargeIn) for e in events)
    reactions = call.barge_in_reactions()
    assert reactions and reactions[0] < 0.6, call.report()
