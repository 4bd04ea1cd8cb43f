"""WebSocket media (chan_websocket, engine/ws_media.py) end to end over the simulator
(pbxsim/ws_media.py): the engine connects to the PBX's /media/ID, the caller's audio reaches the
provider and the agent's reaches the caller, in each format and playback mode; hangups both ways,
a transfer, and the faults (a cut socket, garbage, a 100 MB frame, a slow reader, a refused
connection) end or spare the call cleanly with nothing left. Then media/ws_media.py's protocol on
its own."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.sessions import BargeIn, CallLog, TranscriptAdded
from media.ws_media import (
    Command, Correlated, DtmfEnd, ErrorEvent, FlowControl, FlowEvent, MediaStart, Rechunker, Status, WsMediaProtocolError,
    format_command, format_event, parse_command, parse_event,
)
from pbxsim.media import barge_in_reactions, load_wav_ulaw
from pbxsim.script import Dtmf, Pause, Say, WaitAgent, WaitAgentDone
from pbxsim.ws_media import WsMediaEndpoint
from providers.profile import AgentProfile, Department
from tests.conftest import AGENT_PASS, HELLO, running_engine, wait_for
from tests.test_e2e_echo import best_correlation

BILLING = Department(description="invoices, payments and refunds", digit="1", context="from-internal", extension="201")
LONG_GREETING = ("Hello and welcome to the northside dental practice. We are open from eight in the morning until six in the "
                 "evening, Monday to Friday. How can I help you today?")


def ws_engine(pbx, tmp_path, mode: str = "stream", fmt: str = "ulaw", configure=None, **env: str):
    def cfg(c) -> None:
        c.media.transport = "websocket"
        c.websocket.format = fmt
        c.websocket.connect_timeout_s = 2.0
        if configure is not None:
            configure(c)

    return running_engine(pbx, tmp_path, cfg, AIAGENT_DOWNSTREAM_MODE=mode, **env)


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


def clean(pbx, eng) -> bool:
    """Nothing left: no call in the engine, no link, no channel or bridge or media socket on the PBX."""
    t = eng.transports["websocket"]
    return (len(eng.store) == 0 and pbx.leftovers() == ([], []) and not t.links and not pbx.external_media.websockets.by_connection
            and all(ep.closed.is_set() for ep in pbx.external_endpoints.values() if isinstance(ep, WsMediaEndpoint) and ep.ws is not None))


def endpoint(pbx, rec) -> WsMediaEndpoint:
    ep = pbx.external_endpoints[rec.external_media]
    assert isinstance(ep, WsMediaEndpoint)
    return ep


async def bridged_endpoint(pbx, rec) -> WsMediaEndpoint:
    await wait_for(lambda: rec.bridged and rec.external_media in pbx.external_endpoints)
    ep = endpoint(pbx, rec)
    await asyncio.wait_for(ep.connected.wait(), 5)
    return ep


# ---- the line: echo, each format, each playback mode

@pytest.mark.parametrize(("fmt", "mode"), [("ulaw", "stream"), ("slin", "stream"), ("slin16", "stream"), ("ulaw", "file")])
async def test_echo_over_websocket_in_each_format_and_mode(pbx, tmp_path, fmt, mode):
    async with ws_engine(pbx, tmp_path, mode, fmt) as eng:
        rec = pbx.place_call(str(AGENT_PASS), hold_s=2.5)
        ep = await bridged_endpoint(pbx, rec)
        # While it is up: the call and the transport say websocket.
        await wait_for(lambda: any(s.transport == "websocket" for s in eng.status().calls))
        ts = next(t for t in eng.status().transports if t.name == "websocket")
        assert ts.running and ts.connections == 1 and ts.listening.startswith("ws://127.0.0.1:")
        await asyncio.wait_for(rec.finished.wait(), 30)
        r = rec.report(pbx)
        assert r["answered"] and r["bridged"] and r["ended_by"] == "caller" and r["hangup_clean"], r
        assert r["agent_audio_seconds"] > 2.5, r
        sent = load_wav_ulaw(AGENT_PASS)
        # Every caller frame reached the engine as one BINARY frame of the channel's size.
        assert ep.packets_sent >= len(sent) // 160
        if mode == "stream":
            assert best_correlation(sent, rec.media.agent_audio()) > 0.8
            assert ep.packets_received >= ep.packets_sent - 5 and ep.rechunker.dropped_bytes == 0
        else:
            assert ep.packets_received == 0  # the files play on the bridge
        assert ep.garbage == 0 and ep.ignored_full == 0
        await wait_for(lambda: clean(pbx, eng))
        ts = next(t for t in eng.status().transports if t.name == "websocket")
        assert ts.connections_total == 1 and ts.messages_in > 100 and ts.bytes_in > 100 * ep.frame_bytes
        assert ts.cut == ts.malformed == ts.oversize == ts.unknown == ts.slow_reader == 0
        assert ep.ended_by == "channel"  # the engine deleted the channel; the PBX closed the socket
    assert list((tmp_path / "media").iterdir()) == []


# ---- with the local models: greeting, question, barge-in, transfer

@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_greeting_heard_and_question_answered(pbx, tmp_path, mode):
    async with ws_engine(pbx, tmp_path, mode, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.5), Say(str(AGENT_PASS)), WaitAgent(0.5, timeout_s=20), WaitAgentDone(0.8, timeout_s=20)])
        await asyncio.wait_for(rec.finished.wait(), 90)
        events = drain(sub)
        await wait_for(lambda: clean(pbx, eng))
    agent = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final]
    caller = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller" and e.turn.final]
    assert agent and agent[0] == AgentProfile().greeting
    assert caller and "password" in caller[0].lower(), caller
    said_at = rec.media.said[0][0]
    assert rec.media.agent_heard_s() > 1.0 and rec.media.agent_heard_s(said_at) > 0.8, rec.report(pbx)
    assert rec.report(pbx)["ended_by"] == "caller"


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_barge_in_stops_the_agent_at_the_caller(pbx, tmp_path, mode):
    def profile(c) -> None:
        c.profiles["default"] = AgentProfile(greeting=LONG_GREETING)

    async with ws_engine(pbx, tmp_path, mode, configure=profile, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgent(1.5), Say(str(AGENT_PASS)), Pause(2.0)])
        ep = await bridged_endpoint(pbx, rec)
        await asyncio.wait_for(rec.finished.wait(), 60)
        events = drain(sub)
        await wait_for(lambda: clean(pbx, eng))
    assert any(isinstance(e, BargeIn) for e in events)
    # The caller's one utterance came over the greeting: from its onset to the agent quiet at the caller.
    reactions = barge_in_reactions([rec.media.said[0][1]], rec.media.agent_frames)
    assert reactions and reactions[0] < 0.6, rec.report(pbx)
    if mode == "stream":  # what chan_websocket still held to play went too
        assert "FLUSH_MEDIA" in ep.commands


async def test_keypad_transfer_leaves_nothing_of_the_websocket(pbx, tmp_path):
    def profile(c) -> None:
        c.profiles["default"] = AgentProfile(departments={"billing": BILLING}, greeting="Hello.")

    async with ws_engine(pbx, tmp_path, configure=profile, AIAGENT_PROVIDER="local") as eng:
        rec = pbx.place_call(script=[WaitAgentDone(0.3), Dtmf("1"), Pause(4.0)])
        ep = await bridged_endpoint(pbx, rec)
        await asyncio.wait_for(rec.finished.wait(), 40)
        r = rec.report(pbx)
        assert r["left_stasis"] == "continue to 201@from-internal" and r["transferred_to"] == "201@from-internal", r
        await wait_for(lambda: clean(pbx, eng))
        assert ep.ended_by == "channel"


# ---- hangups

async def test_the_engine_hangs_up(pbx, tmp_path):
    async with ws_engine(pbx, tmp_path) as eng:
        rec = pbx.place_call(str(HELLO), hold_s=20)
        ep = await bridged_endpoint(pbx, rec)
        assert await eng.hangup(rec.id)
        await asyncio.wait_for(rec.finished.wait(), 10)
        assert rec.ended_by == "ari"
        await wait_for(lambda: clean(pbx, eng))
        assert ep.ended_by in ("channel", "app-hangup")


async def test_engine_stop_sends_hangup_on_the_socket(pbx, tmp_path):
    """The link's own close (the engine stopping with the channel still up) says HANGUP."""
    async with ws_engine(pbx, tmp_path) as eng:
        rec = pbx.place_call(str(HELLO), hold_s=20)
        ep = await bridged_endpoint(pbx, rec)
        link = next(iter(eng.transports["websocket"].links))
        link.close()
        link.close()  # idempotent
        await asyncio.wait_for(ep.closed.wait(), 5)
        assert ep.commands == ["HANGUP"] and ep.ended_by == "app-hangup"
        await asyncio.wait_for(rec.finished.wait(), 10)
        await wait_for(lambda: clean(pbx, eng))


# ---- faults

async def test_socket_cut_mid_call_ends_that_call_only(pbx, tmp_path):
    async with ws_engine(pbx, tmp_path) as eng:
        sub = eng.store.subscribe()
        one = pbx.place_call(str(AGENT_PASS), hold_s=3.0, caller_number="201")
        two = pbx.place_call(str(AGENT_PASS), hold_s=3.0, caller_number="202")
        ep1 = await bridged_endpoint(pbx, one)
        await bridged_endpoint(pbx, two)
        ep1.cut()
        await asyncio.wait_for(one.finished.wait(), 10)
        await asyncio.wait_for(two.finished.wait(), 30)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == one.id]
        assert any(m.startswith("media lost:") and "WebSocket" in m for m in logs), logs
        assert one.report(pbx)["hangup_clean"] and two.report(pbx)["ended_by"] == "caller"
        assert two.report(pbx)["agent_audio_seconds"] > 2.5
        await wait_for(lambda: clean(pbx, eng))
        assert eng.transports["websocket"].status().cut == 1


async def test_garbage_is_counted_and_the_call_goes_on(pbx, tmp_path):
    async with ws_engine(pbx, tmp_path, fmt="slin") as eng:
        rec = pbx.place_call(str(AGENT_PASS), hold_s=2.5)
        ep = await bridged_endpoint(pbx, rec)
        for text in ("NONSENSE", "{not json", '{"event": 5}', "MEDIA_START connection_id", "x" * 5000):
            ep.send_text(text)
        ep.send_binary(b"\x01" * 321)  # not whole 16-bit samples
        ep.send_binary(b"")
        await asyncio.wait_for(rec.finished.wait(), 30)
        r = rec.report(pbx)
        assert r["ended_by"] == "caller" and r["agent_audio_seconds"] > 2.5, r
        t = eng.transports["websocket"].status()
        assert t.malformed >= 6 and t.cut == 0
        await wait_for(lambda: clean(pbx, eng))


async def test_a_100_mb_frame_is_refused_unread_and_ends_that_call_only(pbx, tmp_path):
    async with ws_engine(pbx, tmp_path) as eng:
        sub = eng.store.subscribe()
        one = pbx.place_call(str(HELLO), hold_s=20, caller_number="201")
        two = pbx.place_call(str(AGENT_PASS), hold_s=2.5, caller_number="202")
        ep1 = await bridged_endpoint(pbx, one)
        await bridged_endpoint(pbx, two)
        ep1.send_huge_header()
        await asyncio.wait_for(one.finished.wait(), 10)
        await asyncio.wait_for(two.finished.wait(), 30)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == one.id]
        assert any("media lost:" in m and "65536 bytes" in m for m in logs), logs
        assert two.report(pbx)["ended_by"] == "caller" and two.report(pbx)["agent_audio_seconds"] > 2.5
        t = eng.transports["websocket"].status()
        assert t.oversize == 1 and t.cut == 1
        await wait_for(lambda: clean(pbx, eng))


async def test_xoff_drops_that_calls_frames_and_others_keep_their_cadence(pbx, tmp_path):
    async with ws_engine(pbx, tmp_path) as eng:
        one = pbx.place_call(str(AGENT_PASS), hold_s=2.5, caller_number="201")
        two = pbx.place_call(str(AGENT_PASS), hold_s=2.5, caller_number="202")
        ep1 = await bridged_endpoint(pbx, one)
        ep2 = await bridged_endpoint(pbx, two)
        await wait_for(lambda: ep1.packets_received > 10)  # the echo is playing
        ep1.force_flow("MEDIA_XOFF")
        t = eng.transports["websocket"]
        await wait_for(lambda: t.counters.slow_reader > 25)
        got = ep1.packets_received
        arrivals: list[float] = []
        before = ep2.packets_received
        start = time.monotonic()
        while time.monotonic() - start < 0.6:
            await asyncio.sleep(0.02)
            if ep2.packets_received != before:
                arrivals.append(time.monotonic())
                before = ep2.packets_received
        assert ep1.packets_received <= got + 2  # nothing more sent to the full queue
        assert len(arrivals) >= 20, arrivals  # the other call's frames kept coming every 20 ms
        ep1.force_flow("MEDIA_XON")
        await wait_for(lambda: ep1.packets_received > got + 10)
        await asyncio.wait_for(one.finished.wait(), 30)
        await asyncio.wait_for(two.finished.wait(), 30)
        assert one.report(pbx)["ended_by"] == "caller" and two.report(pbx)["ended_by"] == "caller"
        assert t.counters.xoff == 1 and t.status().cut == 0
        await wait_for(lambda: clean(pbx, eng))


async def test_media_url_refusing_fails_setup_with_the_reason(pbx, tmp_path):
    pbx.external_media.websockets.refuse = 403
    async with ws_engine(pbx, tmp_path) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(str(HELLO), hold_s=5)
        await asyncio.wait_for(rec.finished.wait(), 15)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == rec.id]
        assert any("call setup failed" in m and "refused the media WebSocket" in m and "403" in m for m in logs), logs
        assert rec.ended_by == "ari"
        await wait_for(lambda: clean(pbx, eng))
        assert pbx.external_media.websockets.refused == 1


async def test_no_media_start_in_time_fails_setup(pbx, tmp_path, monkeypatch):
    async def silent_serve(self, ws):
        self.ws = ws
        async for _ in ws:
            pass

    monkeypatch.setattr(WsMediaEndpoint, "serve", silent_serve)
    async with ws_engine(pbx, tmp_path, configure=lambda c: setattr(c.websocket, "connect_timeout_s", 0.5)) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(str(HELLO), hold_s=5)
        await asyncio.wait_for(rec.finished.wait(), 15)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == rec.id]
        assert any("no MEDIA_START" in m for m in logs), logs
        await wait_for(lambda: len(eng.store) == 0 and pbx.leftovers() == ([], []) and not eng.transports["websocket"].links)


# ---- the simulator's chan_websocket on its own: what tests/test_differential_ws_media.py compares with Asterisk

async def test_simulated_chan_websocket_as_measured_on_asterisk(tmp_path):
    from pbxsim.server import SimPBX
    from tests.test_differential import Media, SimSide
    from tests.test_differential_ws_media import run

    media = Media(tmp_path / "media")
    media.write()
    sim = SimPBX(username="ari", password="ari")
    await sim.start(port=0)
    try:
        obs = await run(SimSide(sim.url, media))
    finally:
        await sim.stop()
    assert sim.violations == []
    assert obs["reply"] == {"state": "Down", "name_form": True, "vars": ["MEDIA_WEBSOCKET_CONNECTION_ID", "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"],
                            "optimal_frame_size_var": "160", "connection_id_form": True}
    assert obs["stasis_before_connect"] is False and obs["stasis_after_connect"] is True
    assert obs["media_start"]["fields"] == "MEDIA_START connection_id: channel: channel_id: format: optimal_frame_size: ptime:"
    assert obs["to_app"] == {"sizes": [160], "enough": "in", "median_gap": "in"}
    assert obs["flow"] == {"xoff_soon": "in", "xon_after_s": "in"}
    assert obs["app_hangup"] == {"events": [("ChannelHangupRequest", 16), ("StasisEnd", None)], "close_code": 1000}
    assert obs["refused"] == {"gone": 404, "never": 404}


# ---- media/ws_media.py

def test_media_start_in_both_formats():
    plain = ("MEDIA_START connection_id:5631542d-094d-469f-97ce-1dfec33093d1 channel:WebSocket/INCOMING/0x7f20e8002910 "
             "channel_id:em-1 format:ulaw optimal_frame_size:160 ptime:20")
    ev = parse_event(plain)
    assert ev == MediaStart("5631542d-094d-469f-97ce-1dfec33093d1", "WebSocket/INCOMING/0x7f20e8002910", "em-1", "ulaw", 160, 20)
    assert format_event(ev) == plain
    js = format_event(MediaStart("c", "WebSocket/x/0x1", "em-1", "slin16", 640, 20, {"A": "1"}), "json")
    assert parse_event(js) == MediaStart("c", "WebSocket/x/0x1", "em-1", "slin16", 640, 20, {"A": "1"})


@pytest.mark.parametrize("ev", [
    FlowEvent("MEDIA_XOFF", "em-1"), FlowEvent("MEDIA_XON", "em-1"), FlowEvent("QUEUE_DRAINED", "em-1"),
    Correlated("MEDIA_BUFFERING_COMPLETED", "b1", "em-1"), Correlated("MEDIA_MARK_PROCESSED", "m 2", "em-1"),
    DtmfEnd("5", "em-1"), Status("em-1", 3, 800, 900, False, True, False), ErrorEvent("PAUSE_MEDIA not supported in passthrough mode", "em-1"),
])
@pytest.mark.parametrize("fmt", ["plain-text", "json"])
def test_every_event_reads_back(ev, fmt):
    got = parse_event(format_event(ev, fmt))
    if fmt == "plain-text" and isinstance(ev, (FlowEvent, Correlated)):
        assert got == type(ev)(ev.event, *(() if isinstance(ev, FlowEvent) else (ev.correlation_id,)))  # plain text has no channel id
    else:
        assert got == ev


def test_plain_text_as_asterisk_writes_it():
    assert parse_event("MEDIA_XOFF") == FlowEvent("MEDIA_XOFF")
    assert parse_event("MEDIA_BUFFERING_COMPLETED") == Correlated("MEDIA_BUFFERING_COMPLETED", "")
    assert parse_event("DTMF_END digit:# channel_id:abc") == DtmfEnd("#", "abc")
    assert parse_event("ERROR channel_id:abc error_text:SET_MEDIA_DIRECTION only supports JSON format.") == ErrorEvent(
        "SET_MEDIA_DIRECTION only supports JSON format.", "abc")
    st = parse_event("STATUS channel_id:abc queue_length:0 xon_level:800 xoff_level:900 queue_full:false bulk_media:false media_paused:true")
    assert st == Status("abc", 0, 800, 900, False, False, True)


@pytest.mark.parametrize("text", ["", "   ", "HELLO", "MEDIA_START connection_id:x", "MEDIA_START a b", "{", "[1]", '{"event": 1}',
                                  "MEDIA_START connection_id:a channel:b channel_id:c format:ulaw optimal_frame_size:x ptime:20", "DTMF_END digit:12"])
def test_garbage_is_a_protocol_error(text):
    with pytest.raises(WsMediaProtocolError):
        parse_event(text)


def test_commands_both_ways():
    for cmd in (Command("ANSWER"), Command("HANGUP"), Command("MARK_MEDIA", "m1"), Command("STOP_MEDIA_BUFFERING", "b1"), Command("FLUSH_MEDIA"),
                Command("GET_STATUS"), Command("REPORT_QUEUE_DRAINED"), Command("PAUSE_MEDIA"), Command("CONTINUE_MEDIA"),
                Command("START_MEDIA_BUFFERING")):
        assert parse_command(format_command(cmd)) == cmd
        assert parse_command(format_command(cmd, "json"), "json") == cmd
    assert format_command(Command("MARK_MEDIA", "m1")) == "MARK_MEDIA m1"
    assert format_command(Command("HANGUP"), "json") == '{"command":"HANGUP"}'
    assert parse_command('{"command":"SET_MEDIA_DIRECTION","direction":"in"}', "json") == Command("SET_MEDIA_DIRECTION", direction="in")
    for bad, fmt in (("BOGUS", "plain-text"), ("{x", "json"), ('{"command": 3}', "json"), ("", "plain-text")):
        with pytest.raises(WsMediaProtocolError):
            parse_command(bad, fmt)  # type: ignore[arg-type]


def test_rechunker_and_flow_control_as_chan_websocket():
    r = Rechunker(160)
    assert [len(f) for f in r.frames(b"\x00" * 500)] == [160, 160, 160] and r.dropped_bytes == 20
    assert r.frames(b"\x00" * 100) == [] and r.dropped_bytes == 120
    fc = FlowControl()
    assert [fc.queued(n) for n in (1, 899)] == [None, None]
    assert fc.queued(900) == "MEDIA_XOFF" and fc.queued(950) is None
    assert fc.dequeued(850) is None and fc.dequeued(800) is None
    assert fc.dequeued(799) == "MEDIA_XON" and fc.dequeued(10) is None


async def test_no_tasks_left_after_engine_stop_mid_call(pbx, tmp_path):
    from tests.test_e2e_echo import _from_package

    async with ws_engine(pbx, tmp_path) as eng:
        rec = pbx.place_call(str(HELLO), hold_s=20)
        ep = await bridged_endpoint(pbx, rec)
        await eng.stop()  # hangs the live call up
        ours = [t for t in asyncio.all_tasks() if not t.done() and _from_package(t, ("engine",))]
        assert ours == []
        await asyncio.wait_for(rec.finished.wait(), 10)
        await asyncio.wait_for(ep.closed.wait(), 5)
        assert pbx.leftovers() == ([], [])


async def test_client_mode_server_refuses_what_is_no_call_of_its_own(pbx, tmp_path):
    """Client mode: the engine's WebSocket server counts a connection for no waiting call, and one
    that does not start with MEDIA_START, and closes both."""
    import aiohttp

    def client(c) -> None:
        c.websocket.connection_type = "client"
        c.websocket.port = 0

    async with ws_engine(pbx, tmp_path, configure=client) as eng:
        t = eng.transports["websocket"]
        assert t.running and t.port
        start = format_event(MediaStart("aiagent", "WebSocket/aiagent/0x7f0000000001", "nobody", "ulaw", 160, 20))
        async with aiohttp.ClientSession() as http:
            for first in (start, "HELLO"):
                ws = await http.ws_connect(f"ws://127.0.0.1:{t.port}/media?aiagent_channel=nobody", protocols=("media",))
                await ws.send_str(first)
                msg = await ws.receive()
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                await ws.close()
        s = t.status()
        assert s.unknown == 1 and s.malformed == 1 and s.connections == 0 and s.listening == f"127.0.0.1:{t.port}"
