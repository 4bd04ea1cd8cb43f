"""WebSocket media (chan_websocket) end to end on the real Asterisk 22: the engine's calls on
transport websocket, server mode (the engine connects to Asterisk's /media/ID) and client mode
(Asterisk connects to the engine through websocket_client.conf), checked as tests/test_asterisk.py
checks RTP: heard, answered, barge-in, hangup both ways, transfer, nothing left."""

from __future__ import annotations

import pytest

from pbxsim.script import Pause, Say
from tests.conftest import AGENT_PASS, free_port, running_engine, wait_for
from tests.test_asterisk import ended, media_empty

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
