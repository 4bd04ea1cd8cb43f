"""WebSocket media (chan_websocket) end to end on the real Asterisk 22: the engine's calls on
transport websocket, server mode (the engine connects to Asterisk's /media/ID) and client mode
(Asterisk connects to the engine through websocket_client.conf), checked as tests/test_asterisk.py
checks RTP: heard, answered, barge-in, hangup both ways, transfer, nothing left."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from engine.sessions import ActionChanged, BargeIn
from media.ws_media import Command
from pbxsim.script import Dtmf, Pause, Say, WaitAgent, WaitAgentDone
from providers.profile import AgentProfile
from tests.conftest import AGENT_PASS, HELLO, free_port, history_of, running_engine, wait_for
from tests.test_asterisk import BILLING, QUESTION, drain, greeted_and_answered, ended, global_var_set, media_empty, whisper  # noqa: F401 (whisper: a fixture)

pytestmark = pytest.mark.asterisk


def ws(mode: str = "stream", fmt: str = "ulaw", connection: str = "server", port: int = 0, profile=None):
    def cfg(c) -> None:
        c.media.transport = "websocket"
        c.websocket.format = fmt
        c.websocket.connection_type = connection
        c.websocket.port = port
        if profile is not None:
            profile(c)

    return cfg


@pytest.mark.parametrize("mode", ["stream", "file"])
@pytest.mark.parametrize("fmt", ["ulaw", "slin16"])
async def test_echo_call_over_websocket(asterisk, callers, tmp_path, mode, fmt):
    async with running_engine(asterisk, tmp_path, ws(mode, fmt), AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        call = callers.place_call([Pause(1.0), Say(str(AGENT_PASS)), Pause(1.5)])
        await ended(call)
        assert call.answered and call.bridged and call.ended_by == "caller"
        assert call.agent_audio_seconds > 2.0, call.report()
        await wait_for(lambda: len(eng.store) == 0)
        t = eng.transports["websocket"]
        assert t.links == set() and t.counters.cut == 0 and t.counters.malformed == 0
    assert media_empty(tmp_path)


def websocket_client_conf(asterisk, port: int, name: str = "aiagent") -> None:
    """The PBX's websocket_client.conf names the engine's WebSocket server (per_call_config: one
    connection per call, Asterisk dials it when the channel is called)."""
    (asterisk.run_dir / "etc" / "websocket_client.conf").write_text(
        f"[{name}]\ntype = websocket_client\nconnection_type = per_call_config\nuri = ws://127.0.0.1:{port}/media\n"
        "protocols = media\nconnection_timeout = 1000\nreconnect_attempts = 1\n"
    )
    out = asterisk.cli("module reload res_websocket_client.so")
    assert "not" not in out.lower() or "reload" in out.lower(), out


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_echo_call_over_websocket_client_mode(asterisk, callers, tmp_path, mode):
    port = free_port()
    websocket_client_conf(asterisk, port)
    async with running_engine(asterisk, tmp_path, ws(mode, "ulaw", "client", port), AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        call = callers.place_call([Pause(1.0), Say(str(AGENT_PASS)), Pause(1.5)])
        await ended(call)
        assert call.answered and call.bridged and call.ended_by == "caller"
        assert call.agent_audio_seconds > 2.0, call.report()
        await wait_for(lambda: len(eng.store) == 0)
        t = eng.transports["websocket"]
        assert t.counters.connections_total == 1 and t.counters.unknown == 0 and t.counters.cut == 0
        await wait_for(lambda: t.links == set())
    assert media_empty(tmp_path)


@contextlib.asynccontextmanager
async def ws_engine(asterisk, tmp_path, mode: str, connection: str, profile=None, cuts: int = 0, **env: str):
    """An engine whose calls use WebSocket media; client mode with a websocket_client.conf naming it.
    After: no call, no link, ``cuts`` sockets ended under their call, nothing unknown or unreadable."""
    port = 0
    if connection == "client":
        port = free_port()
        websocket_client_conf(asterisk, port)
    async with running_engine(asterisk, tmp_path, ws(mode, "ulaw", connection, port, profile), AIAGENT_DOWNSTREAM_MODE=mode, **env) as eng:
        yield eng
        t = eng.transports["websocket"]
        await wait_for(lambda: len(eng.store) == 0 and t.links == set())
        assert t.counters.cut == cuts and t.counters.unknown == 0 and t.counters.malformed == 0, t.counters


BOTH = [("stream", "server"), ("file", "server"), ("stream", "client"), ("file", "client")]


@pytest.mark.parametrize(("mode", "connection"), BOTH)
async def test_greeting_heard_and_question_answered(asterisk, callers, tmp_path, whisper, mode, connection):  # noqa: F811
    async with ws_engine(asterisk, tmp_path, mode, connection, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call(QUESTION)
        await ended(call, 90)
        events = drain(sub)
    greeted_and_answered(events, call, whisper)
    assert call.turn_latencies(), call.report()
    assert media_empty(tmp_path)


@pytest.mark.parametrize(("mode", "connection"), [("stream", "server"), ("file", "server"), ("stream", "client")])
async def test_barge_in_stops_the_agent_at_the_caller(asterisk, callers, tmp_path, mode, connection):
    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(greeting="Hello and welcome to the northside dental practice. We are open from eight in the morning "
                                                        "until six in the evening, Monday to Friday. How can I help you today?")

    async with ws_engine(asterisk, tmp_path, mode, connection, profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([WaitAgent(1.5), Say(str(AGENT_PASS)), Pause(2.0)])
        await ended(call, 60)
        events = drain(sub)
    assert any(isinstance(e, BargeIn) for e in events)
    reactions = call.barge_in_reactions()
    assert reactions and reactions[0] < 0.6, call.report()


@pytest.mark.parametrize("connection", ["server", "client"])
async def test_the_engine_hangs_up_and_the_caller_hangs_up(asterisk, callers, tmp_path, connection):
    async with ws_engine(asterisk, tmp_path, "stream", connection) as eng:
        a = callers.place_call([Pause(20)], caller_number="801")
        b = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(0.5)], caller_number="802")
        await wait_for(lambda: a.far_channel in eng.calls.calls)
        await ended(b)
        assert b.ended_by == "caller"
        assert await eng.hangup(a.far_channel)
        await ended(a, 10)
        assert a.ended_by == "agent"
    assert media_empty(tmp_path)


@pytest.mark.parametrize("connection", ["server", "client"])
async def test_keypad_digit_transfers(asterisk, callers, tmp_path, connection):
    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(departments={"billing": BILLING}, greeting="Hello.")

    async with ws_engine(asterisk, tmp_path, "stream", connection, profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        number = "4101" if connection == "server" else "4102"
        call = callers.place_call([WaitAgentDone(0.3), Dtmf("1"), Pause(12)], caller_number=number)
        assert await global_var_set(callers.ari, f"TRANSFERRED_{number}") == "201"
        await wait_for(lambda: len(eng.calls.calls) == 0)
        settled: list = []

        def transfer_settled() -> bool:
            settled.extend(e.action for e in drain(sub) if isinstance(e, ActionChanged) and e.action.state in ("done", "failed"))
            return bool(settled)

        await wait_for(transfer_settled)
        assert settled[0].kind == "transfer" and settled[0].state == "done", settled[0]
        assert not call.finished.is_set()  # the caller talks to the target now, not hung up
        await callers.hangup(call)
        rec = await history_of(eng, call.far_channel)
    assert rec.outcome == "transferred", rec.outcome


async def test_asterisk_queue_stays_short_while_the_engine_streams(asterisk, callers, tmp_path):
    """The pacer sends one frame per 20 ms, so chan_websocket's queue (XOFF at 900) holds a frame
    or two: a barge-in's flush of the engine's own queue is enough, FLUSH_MEDIA is not needed."""
    def profile(cfg):
        cfg.profiles["default"] = AgentProfile(greeting="Hello and welcome to the northside dental practice. We are open from eight in the morning "
                                                        "until six in the evening, Monday to Friday. How can I help you today?")

    async with ws_engine(asterisk, tmp_path, "stream", "server", profile, AIAGENT_PROVIDER="local") as eng:
        call = callers.place_call([Pause(6.0)])
        await wait_for(lambda: call.agent_heard_s() > 1.0, 30)
        link = next(iter(eng.transports["websocket"].links))
        lengths = []
        for _ in range(10):
            link.status = None
            link.command(Command("GET_STATUS"))
            await wait_for(lambda: link.status is not None, 5)
            assert link.status is not None
            lengths.append(link.status.queue_length)
            await asyncio.sleep(0.1)
        print("chan_websocket queue while streaming:", lengths)
        assert max(lengths) <= 3, lengths
        await ended(call, 30)


@pytest.mark.parametrize("connection", ["server", "client"])
async def test_media_socket_closing_mid_call_ends_that_call_only(asterisk, callers, tmp_path, connection):
    async with ws_engine(asterisk, tmp_path, "stream", connection, cuts=1) as eng:
        sub = eng.store.subscribe()
        a = callers.place_call([Pause(20)], caller_number="811")
        b = callers.place_call([Pause(1.0), Say(str(AGENT_PASS)), Pause(1.5)], caller_number="812")
        await wait_for(lambda: a.far_channel in eng.calls.calls and len(eng.transports["websocket"].links) == 2)
        link = next(lk for lk in eng.transports["websocket"].links if lk.media is not None and lk.media.session.call_id == a.far_channel)
        await link.ws.close()  # the socket ends under the call (as a network cut does)
        await ended(a, 10)
        await ended(b)
        assert b.ended_by == "caller" and b.agent_audio_seconds > 2.0, b.report()
        logs = [e.message for e in drain(sub) if getattr(e, "call_id", None) == a.far_channel and hasattr(e, "message")]
        assert any(m.startswith("media lost:") for m in logs), logs
    assert media_empty(tmp_path)
