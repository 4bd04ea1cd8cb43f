"""The PBX simulator conforms to api-docs and BEHAVIOUR.md, so that tests over it mean something."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from pbxsim.schema import AriSpec
from pbxsim.server import SimPBX
from tests.conftest import HELLO, wait_for

AUTH = {"Authorization": "Basic " + base64.b64encode(b"aiagent:").decode()}


@pytest.fixture
def spec() -> AriSpec:
    return AriSpec()


def test_schema_flags_unknown_missing_and_invalid_parameters(spec):
    op, _ = spec.match("POST", "/channels/externalMedia")
    assert op.key == "channels.externalMedia"
    ok = {"app": "aiagent", "external_host": "127.0.0.1:18080", "format": "ulaw"}
    assert spec.validate_request(op, ok, None) == []
    assert "missing required query parameter 'format'" in spec.validate_request(op, {"app": "a"}, None)[0]
    assert "unknown query parameter 'externalHost'" in spec.validate_request(op, {**ok, "externalHost": "x"}, None)[0]
    assert "is not one of" in spec.validate_request(op, {**ok, "transport": "sctp"}, None)[0]
    op, params = spec.match("POST", "/bridges/b-1/play/p-1")
    assert (op.key, params) == ("bridges.playWithId", {"bridgeId": "b-1", "playbackId": "p-1"})
    op, _ = spec.match("GET", "/channels/1/variable")
    assert spec.validate_request(op, {}, None) == ["channels.getChannelVar: missing required query parameter 'variable'"]


def test_schema_checks_events_against_models(spec):
    good = {
        "type": "PlaybackFinished",
        "application": "aiagent",
        "timestamp": "2026-01-01T00:00:00.000+0000",
        "playback": {"id": "p", "media_uri": "sound:x", "target_uri": "bridge:b", "state": "done"},
    }
    assert spec.validate_event(good) == []
    bad = json.loads(json.dumps(good))
    bad["playback"]["state"] = "finished"
    del bad["playback"]["target_uri"]
    errors = spec.validate_event(bad)
    assert any("target_uri" in e for e in errors) and any("'finished' is not one of" in e for e in errors)
    assert spec.validate_event({"type": "NoSuchEvent"}) == ["event: unknown type 'NoSuchEvent'"]


async def _ari(http, pbx, method, path, **params):
    async with http.request(method, f"{pbx.url}/ari{path}", params=params, headers=AUTH) as r:
        body = await r.json(content_type=None) if r.status != 204 else None
        return r.status, body


async def _events(http, pbx, app="aiagent"):
    ws = await http.ws_connect(f"{pbx.url}/ari/events?app={app}", headers=AUTH)
    return ws


async def _bridged_external_media(http, pbx, bridge_id: str, channel_id: str):
    """The app's event socket, and a mixing bridge holding an ExternalMedia channel alone."""
    ws = await _events(http, pbx)
    await wait_for(lambda: pbx.app_active("aiagent"))
    await _ari(http, pbx, "POST", "/bridges", type="mixing", bridgeId=bridge_id)
    await _ari(http, pbx, "POST", "/channels/externalMedia", app="aiagent", external_host="127.0.0.1:9", format="ulaw", channelId=channel_id)
    await wait_for(lambda: pbx.channel_table.by_id[channel_id].in_stasis)  # else addChannel is refused (422)
    await _ari(http, pbx, "POST", f"/bridges/{bridge_id}/addChannel", channel=channel_id)
    return ws


async def test_behaviour_externalmedia_422_before_stasis_start_and_channelvars(pbx):
    async with aiohttp.ClientSession() as http:
        ws = await _events(http, pbx)
        await wait_for(lambda: pbx.app_active("aiagent"))
        status, _ = await _ari(http, pbx, "POST", "/bridges", type="mixing", bridgeId="b1")
        assert status == 200
        status, ch = await _ari(http, pbx, "POST", "/channels/externalMedia", app="aiagent", external_host="127.0.0.1:9", format="ulaw", channelId="em1")
        assert status == 200
        assert ch["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"] == "127.0.0.1"
        assert int(ch["channelvars"]["UNICASTRTP_LOCAL_PORT"]) % 2 == 0
        # Answered before the channel is in Stasis: 422, as Asterisk does.
        status, body = await _ari(http, pbx, "POST", "/bridges/b1/addChannel", channel="em1")
        assert (status, body["message"]) == (422, "Channel not in Stasis application")
        msg = json.loads((await ws.receive(timeout=2)).data)
        assert msg["type"] == "StasisStart" and msg["channel"]["id"] == "em1" and msg["channel"]["state"] == "Up"
        assert (await _ari(http, pbx, "POST", "/bridges/b1/addChannel", channel="em1"))[0] == 204
        assert (await _ari(http, pbx, "GET", "/channels/em1/rtp_statistics"))[0] == 404
        # Nothing is cleaned up for you: closing the socket leaves channel and bridge in place.
        await ws.close()
        await wait_for(lambda: not pbx.app_active("aiagent"), what="the simulator seeing the app's socket closed")
        assert pbx.leftovers() == (["em1"], ["b1"])
        assert (await _ari(http, pbx, "DELETE", "/channels/em1"))[0] == 204
        assert (await _ari(http, pbx, "DELETE", "/bridges/b1"))[0] == 204
    assert pbx.violations == []


async def test_behaviour_bridge_playback_is_mixed_into_externalmedia(pbx, tmp_path):
    """A playback on the bridge reaches the ExternalMedia channel (the reason for gating)."""
    prompt = tmp_path / "prompt"
    (tmp_path / "prompt.ulaw").write_bytes(bytes(range(0, 256, 2)) * 10)  # 1280 bytes = 160 ms
    async with aiohttp.ClientSession() as http:
        ws = await _bridged_external_media(http, pbx, "b2", "em2")
        ep = pbx.external_endpoints["em2"]
        assert ep.packets_sent == 0  # alone and silent: no packets at all
        status, pb = await _ari(http, pbx, "POST", "/bridges/b2/play/pb-1", media=f"sound:{prompt}")
        assert status == 201 and pb["target_uri"] == "bridge:b2"
        types = []
        while "PlaybackFinished" not in types:
            types.append(json.loads((await ws.receive(timeout=2)).data)["type"])
        assert "PlaybackStarted" in types
        assert ep.packets_sent >= 8  # every 20 ms while the playback ran
        # A missing file still answers 201, then fails.
        status, _ = await _ari(http, pbx, "POST", "/bridges/b2/play/pb-2", media=f"sound:{tmp_path}/missing")
        assert status == 201
        while True:
            ev = json.loads((await ws.receive(timeout=2)).data)
            if ev["type"] == "PlaybackFinished":
                assert ev["playback"]["state"] == "failed"
                break
        await ws.close()
        await _ari(http, pbx, "DELETE", "/channels/em2")
        await _ari(http, pbx, "DELETE", "/bridges/b2")
    assert pbx.violations == []


async def test_behaviour_playback_control_follows_asterisks_state_table(pbx, tmp_path):
    """Pause and unpause as res_stasis_playback.c does them: a queued file cannot be paused (409),
    a pause sends no event and holds the file (and the queue behind it) where it is, an unpause
    sends PlaybackStarted again and the file plays on from there."""
    prompt = tmp_path / "prompt"
    (tmp_path / "prompt.ulaw").write_bytes(bytes(range(0, 256, 2)) * 50)  # 800 ms
    async with aiohttp.ClientSession() as http:
        ws = await _bridged_external_media(http, pbx, "b3", "em3")
        loop = asyncio.get_running_loop()

        async def next_playback_event() -> tuple[float, dict]:
            while True:
                ev = json.loads((await ws.receive(timeout=3)).data)
                if ev["type"].startswith("Playback"):
                    return loop.time(), ev

        await _ari(http, pbx, "POST", "/bridges/b3/play/p1", media=f"sound:{prompt}")
        await _ari(http, pbx, "POST", "/bridges/b3/play/p2", media=f"sound:{prompt}")
        started, ev = await next_playback_event()
        assert (ev["type"], ev["playback"]["id"]) == ("PlaybackStarted", "p1")
        assert (await _ari(http, pbx, "POST", "/playbacks/p2/control", operation="pause"))[0] == 409  # queued
        assert (await _ari(http, pbx, "POST", "/playbacks/nope/control", operation="pause"))[0] == 404
        # Paused part-way: 200 ms of its 800 ms played (8000 samples a second).
        await wait_for(lambda: pbx.bridge_table.get("b3").playbacks[0].spos >= 1600)
        assert (await _ari(http, pbx, "POST", "/playbacks/p1/control", operation="pause"))[0] == 204
        assert (await _ari(http, pbx, "POST", "/playbacks/p1/control", operation="pause"))[0] == 204  # a no-op
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(next_playback_event(), 0.6)  # held: nothing finishes, nothing starts
        assert (await _ari(http, pbx, "POST", "/playbacks/p1/control", operation="unpause"))[0] == 204
        _, ev = await next_playback_event()
        assert (ev["type"], ev["playback"]["id"], ev["playback"]["state"]) == ("PlaybackStarted", "p1", "playing")
        finished, ev = await next_playback_event()
        assert (ev["type"], ev["playback"]["id"]) == ("PlaybackFinished", "p1")
        # Its 800 ms and the 0.6 s it was held; less a few 20 ms ticks that the simulator's clock
        # plays at once to catch up after a stall (CI saw 1.3998 s).
        assert finished - started >= 0.8 + 0.6 - 0.1
        _, ev = await next_playback_event()
        assert (ev["type"], ev["playback"]["id"]) == ("PlaybackStarted", "p2")
        await ws.close()
        await _ari(http, pbx, "DELETE", "/channels/em3")
        await _ari(http, pbx, "DELETE", "/bridges/b3")
    assert pbx.violations == []


async def test_unknown_operation_and_bad_parameters_are_violations():
    pbx = SimPBX()
    await pbx.start(port=0)
    try:
        async with aiohttp.ClientSession() as http:
            assert (await _ari(http, pbx, "POST", "/channels/externalMedia", app="a", format="ulaw", bogus="1"))[0] == 400
            assert (await _ari(http, pbx, "GET", "/nothing/here"))[0] == 404
            wrong = {"Authorization": "Basic " + base64.b64encode(b"aiagent:wrong").decode()}
            async with http.get(f"{pbx.url}/ari/asterisk/info", headers=wrong) as r:
                assert r.status == 401
    finally:
        await pbx.stop()
    assert any("unknown query parameter 'bogus'" in v for v in pbx.violations)
    assert any("/nothing/here" in v for v in pbx.violations)


async def test_second_websocket_replaces_the_first(pbx):
    async with aiohttp.ClientSession() as http:
        first = await _events(http, pbx)
        await wait_for(lambda: pbx.app_active("aiagent"))
        second = await _events(http, pbx)
        msg = json.loads((await first.receive(timeout=2)).data)
        assert msg["type"] == "ApplicationReplaced"
        rec = pbx.place_call(str(HELLO), hold_s=0.1)
        msg = json.loads((await second.receive(timeout=2)).data)
        assert msg["type"] == "StasisStart" and msg["channel"]["id"] == rec.id
        await _ari(http, pbx, "DELETE", f"/channels/{rec.id}")
        await first.close()
        await second.close()


async def test_call_into_an_app_with_no_websocket_fails_at_once(pbx):
    rec = pbx.place_call(str(HELLO), hold_s=0.1)
    assert not rec.accepted and rec.error == "Stasis app 'aiagent' not active"


def test_bundled_api_docs_are_asterisks_own():
    """pbxsim/api_docs is a verbatim copy of shared/ari/api-docs (Asterisk 22.10.1) when that is at hand."""
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "ari" / "api-docs"
    bundled = Path(__file__).resolve().parents[1] / "pbxsim" / "api_docs"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not present on this machine")
    names = sorted(p.name for p in shared.glob("*.json"))
    assert names == sorted(p.name for p in bundled.glob("*.json"))
    for name in names:
        assert (shared / name).read_bytes() == (bundled / name).read_bytes(), name


async def test_a_long_running_simulator_forgets_old_finished_calls(pbx, monkeypatch):
    from pbxsim import server

    monkeypatch.setattr(server, "KEEP_FINISHED_CALLS", 3)
    recs = [pbx.place_call(str(HELLO), hold_s=0.1) for _ in range(6)]  # no app connected: each ends at once
    assert all(r.finished.is_set() for r in recs)
    assert list(pbx.calls) == [r.id for r in recs[2:]]  # 3 finished kept + the newest


def test_bridge_playbacks_come_back_as_a_real_bridge_returns_them():
    """BEHAVIOUR.md, "The echo of bridge playbacks": queued files play sample-continuously
    whatever their lengths, the partial last frame of the queue never comes back, and in
    continuous playback one frame without playback slips in about every 8-12 s."""
    import random
    from collections import deque

    from pbxsim.media import BridgePlayer, Playback

    rng = random.Random(4)
    files = [bytes(rng.randrange(256) for _ in range(n)) for n in (250, 333, 417, 160 * 3000 + 77)]
    queue: deque = deque(Playback(f"p{i}", "sound:x", "bridge:b", [f[j : j + 160] for j in range(0, len(f), 160)]) for i, f in enumerate(files))
    events: list[tuple[str, str]] = []
    player = BridgePlayer(queue, lambda pb, what: events.append((pb.id, what)), random.Random(1))
    frames = []
    for _ in range(3100):
        frames.append(player.frame())
        player.flush_events()
    content = b"".join(f for f in frames if f is not None)
    whole = b"".join(files)
    assert content == whole[: len(whole) - len(whole) % 160]  # continuous; the partial last frame dropped
    last = max(i for i, f in enumerate(frames) if f is not None)
    gaps = sum(1 for f in frames[:last] if f is None)
    assert 5 <= gaps <= 9  # at the start, and one every 8-12 s of the 60 s
    assert [e for e in events if e[1] == "started"] == [(f"p{i}", "started") for i in range(4)]
    assert [e for e in events if e[1] == "finished"] == [(f"p{i}", "finished") for i in range(4)]


async def _collect(ws, seconds: float) -> list[dict]:
    out = []
    end = asyncio.get_running_loop().time() + seconds
    while (left := end - asyncio.get_running_loop().time()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            break
        out.append(json.loads(msg.data))
    return out


async def _bridged_caller(http, pbx, **call):
    """A caller in Stasis, in a bridge of ours; the events socket with StasisStart read."""
    ws = await _events(http, pbx)
    await wait_for(lambda: pbx.app_active("aiagent"))
    rec = pbx.place_call(hold_s=5.0, **call)
    start = json.loads((await ws.receive(timeout=2)).data)
    assert start["type"] == "StasisStart"
    await _ari(http, pbx, "POST", "/bridges", type="mixing", bridgeId="b1")
    assert (await _ari(http, pbx, "POST", "/bridges/b1/addChannel", channel=rec.id))[0] == 204
    await _collect(ws, 0.05)
    return ws, rec, start


async def test_behaviour_dialled_number_and_continue_into_the_dialplan(pbx):
    async with aiohttp.ClientSession() as http:
        ws, rec, start = await _bridged_caller(http, pbx, dialled="100", args=["inbound", "100"])
        assert start["channel"]["dialplan"]["exten"] == "100" and start["args"] == ["inbound", "100"]
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/continue", label="nope"))[0] == 404
        assert (await _ari(http, pbx, "POST", "/applications/aiagent/subscription", eventSource=f"channel:{rec.id}"))[0] == 200
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/continue", context="from-internal", extension="201", priority="1"))[0] == 204
        events = [e["type"] for e in await _collect(ws, 0.2)]
        # As a real Asterisk: BRIDGEPEER cleared, out of the bridge, out of Stasis; then, subscribed,
        # the dialplan running the target. The bridge stays, the caller is not hung up.
        assert events == ["ChannelVarset", "ChannelLeftBridge", "StasisEnd", "ChannelDialplan"]
        assert rec.transferred_to == "201@from-internal" and "b1" in pbx.bridges and rec.id in pbx.channels
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/continue"))[0] == 409  # a second one


async def test_behaviour_continue_to_a_missing_extension_drops_the_caller(pbx):
    async with aiohttp.ClientSession() as http:
        ws, rec, _ = await _bridged_caller(http, pbx)
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/continue", context="from-internal", extension="5555"))[0] == 204
        events = [e["type"] for e in await _collect(ws, 0.2)]
        assert events == ["ChannelVarset", "ChannelLeftBridge", "StasisEnd"]  # unsubscribed: nothing more
        assert rec.ended_by == "dialplan" and rec.transferred_to is None
        ws2, rec2, _ = await _bridged_caller(http, pbx)
        await _ari(http, pbx, "DELETE", "/bridges/b1")
        assert (await _ari(http, pbx, "POST", "/applications/aiagent/subscription", eventSource=f"channel:{rec2.id}"))[0] == 200
        await _ari(http, pbx, "POST", f"/channels/{rec2.id}/continue", context="nowhere", extension="1")
        events = [e["type"] for e in await _collect(ws2, 0.2)]
        assert events[-3:] == ["StasisEnd", "ChannelHangupRequest", "ChannelDestroyed"]  # the failed transfer, seen


async def test_behaviour_redirect_move_and_hangup_causes(pbx):
    async with aiohttp.ClientSession() as http:
        ws, rec, _ = await _bridged_caller(http, pbx)
        status, body = await _ari(http, pbx, "POST", f"/channels/{rec.id}/redirect", endpoint="Local/201@from-internal")
        assert (status, body["message"]) == (422, "Endpoint technology 'Local' does not match channel technology 'PJSIP'")
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/redirect", endpoint="PJSIP"))[0] == 422
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/move", app="nobody"))[0] == 204
        assert [e["type"] for e in await _collect(ws, 0.1)] == ["ApplicationMoveFailed"]
        assert (await _ari(http, pbx, "DELETE", f"/channels/{rec.id}", reason="teapot"))[0] == 400
        assert (await _ari(http, pbx, "DELETE", f"/channels/{rec.id}", reason="busy", reason_code="17"))[0] == 400
        await _ari(http, pbx, "POST", "/applications/aiagent/subscription", eventSource=f"channel:{rec.id}")
        assert (await _ari(http, pbx, "DELETE", f"/channels/{rec.id}", reason="busy"))[0] == 204
        events = await _collect(ws, 0.1)
        assert [e["type"] for e in events] == ["ChannelHangupRequest", "ChannelLeftBridge", "StasisEnd", "ChannelDestroyed"]
        assert (events[0]["cause"], events[0]["soft"]) == (32, True) and events[-1]["cause"] == 17
        assert rec.hangup_cause == 17
    assert len(pbx.violations) == 1 and "'teapot' is not one of" in pbx.violations[0]  # the 400 above
    pbx.violations.clear()


async def test_behaviour_move_without_app_is_refused_by_the_spec(pbx):
    async with aiohttp.ClientSession() as http:
        _, rec, _ = await _bridged_caller(http, pbx)
        # Asterisk 22.10.1 segfaults on this (BEHAVIOUR.md); the simulator answers 400 and records it.
        assert (await _ari(http, pbx, "POST", f"/channels/{rec.id}/move"))[0] == 400
    assert any("move" in v and "'app'" in v for v in pbx.violations)
    pbx.violations.clear()


async def test_behaviour_dtmf_arrives_when_the_key_is_released(pbx):
    async with aiohttp.ClientSession() as http:
        ws, rec, _ = await _bridged_caller(http, pbx)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with http.post(f"{pbx.url}/sim/calls/{rec.id}/dtmf", params={"digit": "5", "duration_ms": "200"}) as r:
            assert r.status == 200
        msg = json.loads((await ws.receive(timeout=2)).data)
        assert (msg["type"], msg["digit"], msg["duration_ms"]) == ("ChannelDtmfReceived", "5", 200)
        assert loop.time() - t0 >= 0.19


def test_every_handler_is_registered_under_an_api_docs_operation(spec):
    """The resources register their handlers by operation key: a mistyped key would leave the
    operation answered 501 and the handler dead, so each key must name an operation in api-docs."""
    handled = set(SimPBX().router.handlers)
    assert handled <= {op.key for op in spec.operations}
    assert {"channels.externalMedia", "bridges.addChannel", "playbacks.control", "events.claimChannel", "asterisk.ping"} <= handled
