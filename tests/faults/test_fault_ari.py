"""Items 1-3 of the fault probe: bad ARI frames, bad REST replies, WebSocket blips during setup.
Each reproduces the fault against the simulator and checks that the next call works and that
nothing is left behind in the PBX."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from engine.supervisor import Supervisor
from providers.base import ComponentStatus
from tests.conftest import HELLO, running_engine, wait_for

BAD_FRAMES = [
    "[1,2,3]", "null", "42", '"x"', "true", '{"type":[]}', '{"type": null}', "not json at all", "{",
    '{"type": "StasisStart"}',  # a known type without its channel
    '{"type": "StasisStart", "channel": {"id": 5}, "args": "x"}',
    "[" * 100000 + "]" * 100000,  # deeper than the JSON decoder goes
]


async def answered(pbx, eng, timeout: float = 30.0) -> dict:
    rec = pbx.place_call(str(HELLO), hold_s=0.5)
    await asyncio.wait_for(rec.finished.wait(), timeout)
    report = rec.report(pbx)
    assert report["bridged"] and report["agent_audio_seconds"] > 0.5, report  # the echo came back
    await wait_for(lambda: len(eng.store) == 0)
    return report


def component(eng, name: str) -> ComponentStatus:
    return next(c for c in eng.components() if c.name == name)


async def test_bad_frames_are_skipped_and_the_next_call_is_answered(pbx, tmp_path, caplog):
    async with running_engine(pbx, tmp_path) as eng:
        for text in BAD_FRAMES:
            assert pbx.send_raw("aiagent", text)
        await wait_for(lambda: eng.events.malformed_events == len(BAD_FRAMES))
        report = await answered(pbx, eng)
        assert report["hangup_clean"]
        events = component(eng, "ari-events")
        assert events.state == "running" and events.restarts == 0 and eng.events.connects == 1
        assert eng.summary().status == "ok"
    # Logged, but rate-limited: one line for the lot, not one per frame.
    lines = [r for r in caplog.records if "malformed ARI event" in r.getMessage()]
    assert len(lines) == 1
    assert pbx.leftovers() == ([], [])


async def test_a_dying_events_task_is_restarted_and_calls_go_on(pbx, tmp_path, monkeypatch):
    """Whatever kills the event stream (here a bug injected into its dispatch), its owner logs it,
    shows it and restarts it; calls keep being answered."""
    async with running_engine(pbx, tmp_path) as eng:
        real = eng.events._dispatch
        boom = {"left": 1}

        def dispatch(text: str) -> None:
            if boom["left"]:
                boom["left"] -= 1
                raise RuntimeError("injected bug")
            real(text)

        monkeypatch.setattr(eng.events, "_dispatch", dispatch)
        pbx.send_raw("aiagent", '{"type": "Dial"}')
        await wait_for(lambda: component(eng, "ari-events").restarts == 1 and eng.events.connected)
        c = component(eng, "ari-events")
        assert c.state == "running" and c.last_error == "RuntimeError: injected bug"
        await answered(pbx, eng)


async def test_supervisor_gives_up_on_a_component_that_keeps_failing():
    fatal: list[str] = []
    sup = Supervisor(fatal.append, max_failures=3, window_s=60, backoff=(0.001, 0.002))
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise OSError("disk on fire")

    sup.start("broken", broken)
    await wait_for(lambda: fatal)
    assert runs == 4 and sup.components["broken"].state == "failed" and not sup.healthy
    assert fatal == ["broken keeps failing: OSError: disk on fire"]
    await sup.stop()


@pytest.mark.parametrize("op, body", [
    ("bridges.destroy", "<html>502 Bad Gateway</html>"),
    ("channels.hangup", "not json"),
    ("bridges.create", '{"unexpected": true}'),
    ("channels.externalMedia", "[]"),
    ("bridges.addChannel", "{"),
    ("channels.answer", "<html>ok</html>"),
])
async def test_a_2xx_reply_that_is_not_ari_never_makes_a_zombie_call(pbx, tmp_path, op, body):
    """With max_calls=1, one zombie would refuse every later caller."""
    def one_call(cfg):
        cfg.rtp.max_calls = 1

    async with running_engine(pbx, tmp_path, one_call) as eng:
        pbx.faults.bad_replies[op] = (200, body, 3)
        rec = pbx.place_call(str(HELLO), hold_s=0.5)
        await asyncio.wait_for(rec.finished.wait(), 30)
        await wait_for(lambda: len(eng.store) == 0, timeout=40)  # out of cleanup, slot free
        pbx.faults.bad_replies.clear()
        await answered(pbx, eng)
        assert eng.summary().status == "ok"
    await wait_for(pbx.leftovers, until=lambda left: left == ([], []))


async def test_ws_blips_during_setup_lose_no_call(pbx, tmp_path, caplog):
    """The events socket drops right after each ExternalMedia is created, so its StasisStart is
    lost; the reconnect's reconcile finds the channel and finishes the setup."""
    caplog.set_level(logging.INFO, "engine.calls")
    async with running_engine(pbx, tmp_path) as eng:
        pbx.faults.drop_ws_after["channels.externalMedia"] = 0.2
        for _ in range(5):
            report = await answered(pbx, eng)
            assert report["hangup_clean"]
        assert eng.store.calls_failed == 0
        assert eng.events.connects >= 6
    recovered = [r for r in caplog.records if "its StasisStart was missed" in r.getMessage()]
    assert len(recovered) == 5
    assert pbx.leftovers() == ([], [])


async def test_an_oversize_frame_on_every_connect_backs_off_and_logs_once(pbx, tmp_path, caplog):
    """An ARI (or a proxy before it) that sends a frame bigger than the client takes on every
    connect: each socket ends in a bad frame, which is a failed attempt like a refused connect: the
    reconnects back off instead of storming, one warning line says why, /health names it; once the
    frame stops, calls are answered."""
    def slow_growing(cfg):
        cfg.asterisk.reconnect_initial_s = 0.05
        cfg.asterisk.reconnect_max_s = 2.0

    pbx.faults.oversize_frame_bytes = 5 * 1024 * 1024
    async with running_engine(pbx, tmp_path, slow_growing) as eng:
        connected_at: list[float] = []
        real = eng.events._on_connect

        async def on_connect(reconnect: bool) -> None:
            connected_at.append(asyncio.get_running_loop().time())
            await real(reconnect)

        eng.events._on_connect = on_connect
        await wait_for(lambda: len(connected_at) >= 7, timeout=30)
        # The 7th attempt waited at least half of 0.05 * 2**5 s: the backoff grew with every bad socket.
        assert connected_at[6] - connected_at[5] >= 0.8, [round(b - a, 3) for a, b in itertools.pairwise(connected_at)]
        await wait_for(lambda: not eng.events.connected)
        summary = eng.summary()
        assert summary.status == "degraded" and "ARI sent a frame the engine cannot take" in (summary.ari_last_error or "")
        pbx.faults.oversize_frame_bytes = 0
        await wait_for(lambda: eng.events.connected and eng.events.last_error is None)
        await answered(pbx, eng)
    lines = [r for r in caplog.records if "ARI events disconnected" in r.getMessage()]
    assert len(lines) == 1 and "ARI sent a frame the engine cannot take" in lines[0].getMessage(), [r.getMessage() for r in lines]
    assert pbx.leftovers() == ([], [])
