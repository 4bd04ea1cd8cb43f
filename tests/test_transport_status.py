"""The call's media transport, wherever an operator looks: /health and /metrics per transport (RTP
end to end against the simulator; AudioSocket and WebSocket from status built here), a transport
configured but not running as a problem, the call history's transport and a stream's gaps judged
instead of loss, the media pane's rows, and doctor's checks of Asterisk's modules and the
AudioSocket port (the simulator, and the real Asterisk 22)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiagent_tui import doctor
from aiagent_tui.history_cli import show
from aiagent_tui.widgets import stream_rows
from engine.diagnosis import diagnose
from engine.history import HistoryDb, record_of
from engine.metrics import EngineCollector
from engine.sessions import CallSession
from engine.status import EngineStatus, TransportStatus
from pbxsim.server import SimPBX
from providers.profile import Norms
from engine.config import AppConfig, load_config
from tests.conftest import HELLO, free_port, get_json, running_engine, wait_for


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


def _render(status: EngineStatus) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EngineCollector(lambda: status))
    return generate_latest(reg).decode()


async def test_health_and_metrics_show_the_rtp_transport_and_its_call(pbx: SimPBX, tmp_path: Path) -> None:
    """A call over RTP: /health's transports say where RTP listens, that it runs, its route and
    datagrams; /metrics has them labelled transport="rtp" and the call counted on it, and the
    existing RTP series still there."""
    async with running_engine(pbx, tmp_path, AIAGENT_PROVIDER="echo") as eng:
        rec = pbx.place_call(str(HELLO), hold_s=4.0, caller_number="5550142")
        await wait_for(lambda: len(eng.store) == 1 and next(iter(eng.store)).rtp_in.packets > 20, timeout=30)
        code, health = await asyncio.to_thread(get_json, eng.summary().health_url)
        metrics = _samples(eng.metrics.render().decode())
        st = eng.status()
        await asyncio.wait_for(rec.finished.wait(), 30)
    assert code == 200 and health["status"] == "ok" and health["media_transports"] == ["rtp"]
    rtp = health["transports"]["rtp"]
    assert rtp["running"] and rtp["listening"] == f"127.0.0.1:{eng.rtp.port}/udp"
    assert rtp["connections"] == 1 and rtp["messages_in"] > 20 and rtp["calls"] == 1
    assert [c["transport"] for c in health["calls"]] == ["rtp"] and health["calls"][0]["rtp"]["transport"] == "rtp"
    # Every transport the engine has is listed, the ones no config names as not running.
    assert {t.name: t.running for t in st.transports} == {"rtp": True, "audiosocket": False, "websocket": False}
    assert metrics[("ai_agent_transport_running", (("transport", "rtp"),))] == 1
    assert metrics[("ai_agent_transport_messages_in_total", (("transport", "rtp"),))] > 20
    assert metrics[("ai_agent_transport_connections", (("transport", "rtp"),))] == 1
    assert metrics[("ai_agent_active_calls_by_transport", (("transport", "rtp"),))] == 1
    assert metrics[("ai_agent_active_calls_by_transport", (("transport", "audiosocket"),))] == 0
    assert metrics[("ai_agent_rtp_packets_in_total", ())] > 20 and metrics[("ai_agent_active_calls", ())] == 1  # the old names stay


async def test_a_configured_transport_that_is_not_running_is_a_problem(pbx: SimPBX, tmp_path: Path) -> None:
    """media.transport = audiosocket: its server runs with the engine; stopped, /health is degraded
    and says which transport and where, as it does for an RTP socket that is down."""
    def configure(cfg) -> None:
        cfg.media.transport = "audiosocket"
        cfg.audiosocket.port = 0

    async with running_engine(pbx, tmp_path, configure, AIAGENT_PROVIDER="echo") as eng:
        s = eng.summary()
        assert s.media_transports == ("rtp", "audiosocket") and s.status == "ok", s.problems
        await eng.transports["audiosocket"].stop()
        s = eng.summary()
        health = eng.status().as_json()
        await eng.transports["audiosocket"].start()  # the engine's stop stops what runs
    assert s.status == "degraded"
    assert any(p.startswith("the audiosocket media transport is not running") for p in s.problems), s.problems
    assert health["status"] == "degraded" and health["transports"]["audiosocket"]["running"] is False


def test_metrics_label_every_counter_of_each_transport() -> None:
    """AudioSocket's and WebSocket's counters as the transports report them: each series labelled
    by transport, the calls on each counted."""
    base = _status_with_no_engine()
    st = dataclasses.replace(base, transports=(
        TransportStatus(name="rtp", listening="127.0.0.1:40000/udp", running=True, connections=1, messages_in=500, messages_out=400),
        TransportStatus(name="audiosocket", listening="127.0.0.1:18090/tcp", running=True, connections=2, connections_total=9, messages_in=1000,
                        messages_out=800, bytes_in=320000, bytes_out=256000, malformed=1, oversize=2, unknown=3, cut=4, slow_reader=0),
        TransportStatus(name="websocket", listening="ws://127.0.0.1:8088/media", running=False, slow_reader=7),
    ), calls_by_transport={"rtp": 1, "audiosocket": 2})
    m = _samples(_render(st))
    a = (("transport", "audiosocket"),)
    assert m[("ai_agent_transport_running", a)] == 1 and m[("ai_agent_transport_running", (("transport", "websocket"),))] == 0
    assert m[("ai_agent_transport_connections", a)] == 2 and m[("ai_agent_transport_connections_opened_total", a)] == 9
    assert (m[("ai_agent_transport_messages_in_total", a)], m[("ai_agent_transport_messages_out_total", a)]) == (1000, 800)
    assert (m[("ai_agent_transport_bytes_in_total", a)], m[("ai_agent_transport_bytes_out_total", a)]) == (320000, 256000)
    assert [m[(f"ai_agent_transport_{k}_total", a)] for k in ("malformed", "oversize", "unknown", "cut")] == [1, 2, 3, 4]
    assert m[("ai_agent_transport_slow_reader_total", (("transport", "websocket"),))] == 7
    assert m[("ai_agent_active_calls_by_transport", a)] == 2 and m[("ai_agent_active_calls_by_transport", (("transport", "websocket"),))] == 0
    health = st.as_json()
    assert health["transports"]["audiosocket"]["cut"] == 4 and health["transports"]["audiosocket"]["calls"] == 2


def _status_with_no_engine() -> EngineStatus:
    from tests.scripted_engine import ScriptedEngine
    from engine.status import AriCounters, CallAggregates, ConversationCounters, PlaybackCounters, RtpCounters

    return EngineStatus(
        summary=ScriptedEngine().summary(), components=(), ari=AriCounters(0, 0, 0),
        rtp=RtpCounters(packets_in=0, packets_out=0, foreign_dropped=0, after_end_dropped=0, malformed_dropped={}, unsupported_payload_dropped=0,
                        duplicates=0, late_dropped=0, probation_dropped=0, kernel_drops=None, receive_buffer_bytes=0, send_errors=0, internal_errors=0,
                        late_ticks=0, pacing_error_p50_ms=0.0, pacing_error_p99_ms=0.0),
        aggregates=CallAggregates(worst_loss_ratio=0.0, worst_jitter_ms=0.0, gated=0, capturing=0, stream_underruns=0, stream_overruns=0),
        conversation=ConversationCounters(), playback=PlaybackCounters(), actions=(), calls=(),
    )


def _stream_session(transport: str, stall_s: float = 0.0, uneven_s: float = 0.0) -> CallSession:
    """10 s of 20 ms messages: one held up ``stall_s``, or every other one ``uneven_s`` late."""
    s = CallSession(call_id="1790000001.42", caller_channel_id="c1", caller_number="5550142")
    s.transport, s.media_remote = transport, "127.0.0.1:51544"
    t = 100.0
    for i in range(500):
        t += 0.02 + (stall_s if i == 250 else 0.0)
        s.stream_in.update(160, 320, t + (uneven_s if i % 2 else 0.0))
    s.ended_at, s.end_reason = s.created_at + 10.0, "caller hung up"
    return s


AUDIO_FINDINGS = {"stream_gaps", "loss", "jitter", "kernel_drops", "ssrc", "malformed"}


def test_history_records_the_transport_and_judges_a_stream_on_what_it_has(tmp_path: Path) -> None:
    """A call over AudioSocket: its record names the transport and far end, counts messages and
    gaps (no loss, nothing RTP-only). The diagnosis notes a 1.2 s pause without flagging it (a quiet
    caller's side makes the same), never says '0 lost', and flags a stream that arrives unevenly on
    its arrival jitter; `calls list` and `calls show` say how the audio came."""
    stalled = record_of(_stream_session("audiosocket", stall_s=1.2), "host:aiagent", ["echo"])
    assert stalled.transport == "audiosocket" and stalled.media_remote == "127.0.0.1:51544"
    q = stalled.quality
    assert q.packets_in == 500 and q.gaps == 1 and 1200 < q.max_gap_ms < 1300 and q.lost == 0 and q.ssrc_changes == 0 and q.kernel_drops is None
    found = {f.kind: f for f in diagnose(stalled, Norms()).findings if f.kind in AUDIO_FINDINGS}
    assert set(found) == {"stream_gaps"} and found["stream_gaps"].level == "ok" and "audiosocket" in found["stream_gaps"].says
    uneven = record_of(_stream_session("websocket", uneven_s=0.05), "host:aiagent", ["echo"])
    found = {f.kind: f for f in diagnose(uneven, Norms()).findings if f.kind in AUDIO_FINDINGS}
    assert uneven.quality.gaps == 0 and set(found) == {"jitter"} and found["jitter"].level != "ok" and "websocket" in found["jitter"].says
    smooth = record_of(_stream_session("websocket"), "host:aiagent", ["echo"])
    assert not [f for f in diagnose(smooth, Norms()).findings if f.kind in AUDIO_FINDINGS]

    out = io.StringIO()
    show(stalled, out)
    text = out.getvalue()
    assert "media: audiosocket from 127.0.0.1:51544" in text and "1 gaps over 100 ms (longest 12" in text and "RTP in" not in text and "SSRC" not in text
    # Stored and listed: the record's JSON carries it (no new column), older records read as RTP.
    db = HistoryDb(f"sqlite:///{tmp_path / 'h.sqlite3'}")
    db.create()
    db.save([stalled])
    assert db.get(stalled.call_id).transport == "audiosocket"
    db.close()
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'[history]\npath = "{tmp_path / "h.sqlite3"}"\n')
    from aiagent_tui.history_cli import main as calls_main

    args = argparse.Namespace(calls_command="list", caller=None, outcome=None, profile=None, since=None, until=None, search=None, limit=50, json=False)
    listing = io.StringIO()
    assert calls_main(load_config(str(cfg), env={}), args, listing) == 0
    header, row = listing.getvalue().splitlines()[:2]
    assert " via " in header and " audiosocket " in row
    listing = io.StringIO()
    assert calls_main(load_config(str(cfg), env={}), argparse.Namespace(**{**vars(args), "json": True}), listing) == 0
    assert json.loads(listing.getvalue())["transport"] == "audiosocket"


def test_the_media_pane_of_a_stream_call_has_no_loss_or_ssrc() -> None:
    from tests.scripted_engine import ScriptedEngine

    eng = ScriptedEngine.mixed_transports()
    ws = next(s for s in eng.store.snapshots() if s.transport == "websocket")
    rows = dict(stream_rows(ws, "20 ms", width=80))
    assert set(rows) == {"from", "in", "gaps", "jitter", "last msg", "out", "pacing"}
    assert str(rows["from"]) == ws.media_remote and rows["in"].startswith(f"{ws.rtp.packets_in} msgs") and "2 (max 331 ms)" in str(rows["gaps"])
    assert "…" in str(dict(stream_rows(ws, "20 ms", width=24))["from"])  # a URL too long keeps both ends
    assert {r.transport for r in eng.store.summaries()} == {"rtp", "audiosocket", "websocket"}


# ---- doctor


def _doctor_config(ari_port: int, tmp_path: Path, **kw: object) -> AppConfig:
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(ari_port), "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(free_port()),
                                 "AIAGENT_MEDIA_DIR": str(tmp_path / "media"), "AIAGENT_DOWNSTREAM_MODE": "stream"})
    for k, v in kw.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


async def test_doctor_checks_the_audiosocket_port_and_says_how_to_free_it(pbx: SimPBX, tmp_path: Path) -> None:
    """media.transport = audiosocket: a free port is ok; a port something listens on fails, with
    the setting to change. The simulator does not say which modules it has: a warning, not a pass."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = _doctor_config(pbx.port, tmp_path, media__transport="audiosocket", audiosocket__port=port)
        checks = {c.name: c for c in await asyncio.to_thread(doctor.run_checks, cfg)}
    assert checks["AudioSocket port"].ok is False and f"127.0.0.1:{port}/tcp cannot be bound" in checks["AudioSocket port"].detail
    assert "[audiosocket] port" in checks["AudioSocket port"].fix
    assert checks["audiosocket modules"].ok is None and "module show like chan_audiosocket" in checks["audiosocket modules"].fix
    cfg = _doctor_config(pbx.port, tmp_path, media__transport="audiosocket", audiosocket__port=free_port())
    checks = {c.name: c for c in await asyncio.to_thread(doctor.run_checks, cfg)}
    assert checks["AudioSocket port"].ok is True
    # An RTP-only site asks Asterisk nothing more than before.
    cfg = _doctor_config(pbx.port, tmp_path)
    names = [c.name for c in await asyncio.to_thread(doctor.run_checks, cfg)]
    assert not [n for n in names if "modules" in n or n == "AudioSocket port"]
    pbx.violations[:] = [v for v in pbx.violations if "getModule" not in v and "/asterisk/modules" not in v]  # the simulator has no module list


def test_doctor_names_the_transports_the_config_uses(tmp_path: Path) -> None:
    cfg = _doctor_config(1, tmp_path, websocket__connection_type="client")
    cfg.profiles["default"] = cfg.profiles["default"].model_copy(update={"transport": "websocket"})
    assert doctor.transports_in_use(cfg) == ["rtp", "websocket"]
    mods = [n for n, _ in doctor._modules_for(cfg, "websocket")]
    assert mods == ["chan_websocket.so", "res_websocket_client.so", "res_http_websocket.so"]
    cfg.audiosocket.form = "dialplan"
    assert [n for n, _ in doctor._modules_for(cfg, "audiosocket")] == ["app_audiosocket.so", "res_audiosocket.so"]


@pytest.mark.asterisk
async def test_doctor_on_the_real_asterisk_finds_the_transport_modules(asterisk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Asterisk 22 loads AudioSocket's and WebSocket's modules: doctor says so; a module it
    has not loaded fails with the module load line."""
    if not asterisk.pid:
        asterisk.start()
    cfg = _doctor_config(asterisk.http_port, tmp_path, media__transport="audiosocket", audiosocket__port=free_port())
    cfg.asterisk.ari_username = cfg.asterisk.ari_password = "ari"
    cfg.profiles["default"] = cfg.profiles["default"].model_copy(update={"transport": "websocket"})
    checks = {c.name: c for c in await asyncio.to_thread(doctor.run_checks, cfg)}
    assert checks["ARI"].ok is True
    assert checks["audiosocket modules"].ok is True, checks["audiosocket modules"]
    assert checks["websocket modules"].ok is True, checks["websocket modules"]
    real = doctor._modules_for
    monkeypatch.setattr(doctor, "_modules_for", lambda c, t: [("chan_nosuch.so", "a test")] if t == "audiosocket" else real(c, t))
    checks = {c.name: c for c in await asyncio.to_thread(doctor.run_checks, cfg)}
    bad = checks["audiosocket modules"]
    assert bad.ok is False and "chan_nosuch.so is not loaded" in bad.detail and "module load chan_nosuch.so" in bad.fix
