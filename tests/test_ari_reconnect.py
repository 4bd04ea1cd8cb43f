"""The ARI events WebSocket drops: calls in progress carry on, lost ones are cleaned up."""

from __future__ import annotations

import asyncio
import base64

import aiohttp

from engine.engine import Engine
from pbxsim.server import SimPBX
from tests.conftest import HELLO, THANKS, engine_config, running_engine, wait_for

AUTH = {"Authorization": "Basic " + base64.b64encode(b"aiagent:").decode()}


async def test_call_survives_a_dropped_websocket(pbx, engine):
    rec = pbx.place_call(str(THANKS), hold_s=0.5)
    await wait_for(lambda: rec.bridged and rec.media.agent_frames)
    assert await pbx.drop_websockets() == 1
    await wait_for(lambda: engine.events.connects == 2)
    heard_before = len(rec.media.agent_frames)
    await wait_for(lambda: len(rec.media.agent_frames) > heard_before + 25)  # echo still flowing
    assert engine.store.get(rec.id) is not None
    # Its hangup arrives on the new socket and is cleaned up as usual.
    await asyncio.wait_for(rec.finished.wait(), 20)
    assert rec.hangup_clean
    summary = engine.summary()
    assert summary.ari_connected and summary.ari_reconnects == 1


async def test_caller_gone_while_disconnected_is_reconciled(pbx, engine):
    rec = pbx.place_call(str(THANKS), hold_s=5.0)
    await wait_for(lambda: rec.bridged and engine.store.get(rec.id) and engine.store.get(rec.id).state.value == "streaming")
    ext_id = rec.external_media
    # Drop the socket and refuse reconnects for a moment (long enough for a loaded machine to see
    # it down); the caller hangs up meanwhile.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pbx.url}/sim/websockets/drop", params={"block_s": "1.5"}) as r:
            assert (await r.json())["dropped"] == 1
    await wait_for(lambda: not engine.ari_connected)
    pbx.hangup_channel(pbx.channels[rec.id], by="caller")  # these events are lost
    assert ext_id in pbx.channels  # nothing cleans up for the engine
    await wait_for(lambda: engine.ari_connected)
    await wait_for(pbx.leftovers, until=lambda left: left == ([], []))
    # The session leaves the store when its teardown has finished: after Asterisk answered its last request.
    await wait_for(lambda: engine.store.get(rec.id) is None)
    assert engine.events.connects >= 2


async def test_leftovers_of_a_previous_engine_are_deleted_and_its_caller_taken_at_start(pbx, tmp_path):
    # A crashed engine left its bridge, its ExternalMedia channel and a caller in Stasis.
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{pbx.url}/ari/events?app=aiagent", headers=AUTH)
        await wait_for(lambda: pbx.app_active("aiagent"))
        rec = pbx.place_call(str(HELLO), hold_s=30.0)
        for path, params in (
            ("/bridges", {"type": "mixing", "bridgeId": "aiagent-br-deadbeef0001"}),
            ("/channels/externalMedia", {"app": "aiagent", "external_host": "127.0.0.1:9", "format": "ulaw", "channelId": "aiagent-em-deadbeef0001"}),
        ):
            async with http.post(f"{pbx.url}/ari{path}", params=params, headers=AUTH) as r:
                assert r.status == 200
        await ws.close()
    async with running_engine(pbx, tmp_path) as eng:
        # The old bridge and ExternalMedia channel go; the caller, still on the line, is taken
        # as a new call (a fresh bridge and ExternalMedia channel) rather than hung up.
        await wait_for(lambda: "aiagent-br-deadbeef0001" not in pbx.bridges and "aiagent-em-deadbeef0001" not in pbx.channels)
        await wait_for(lambda: (s := eng.store.get(rec.id)) is not None and s.state.value == "streaming")
        assert len(pbx.bridges) == 1 and not rec.finished.is_set()
        await eng.hangup(rec.id)
        await asyncio.wait_for(rec.finished.wait(), 20)
        await wait_for(lambda: pbx.channels == {} and pbx.bridges == {})


async def test_engine_starts_before_asterisk_and_connects_when_it_appears(tmp_path):
    probe = SimPBX()
    await probe.start(port=0)
    port = probe.port
    await probe.stop()  # nothing listens there now
    (tmp_path / "media").mkdir()
    cfg = engine_config(probe, tmp_path)
    eng = Engine(cfg)
    await eng.start()
    pbx = SimPBX()
    try:
        # Its first attempt failed (nothing listens): it says why, and is not connected.
        summary = await wait_for(eng.summary, until=lambda s: s.ari_last_error is not None)
        assert not eng.ari_connected and summary.status == "degraded"
        await pbx.start(port=port)
        assert await eng.wait_ari_connected(15)
        rec = pbx.place_call(str(HELLO), hold_s=0.3)
        await asyncio.wait_for(rec.finished.wait(), 15)
        assert rec.bridged and rec.hangup_clean
    finally:
        await eng.stop()
        await pbx.stop()
