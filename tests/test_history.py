"""The call history: what an operator reads the morning after, from the engine's own calls."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime

import pytest
import sqlalchemy as sa

from aiagent_tui.cli import main as cli
from aiagent_tui.history_cli import parse_when
from engine.config import ConfigError, load_config
from engine.engine import Engine
from engine.history import CallRecord, HistoryDb, HistoryRecorder, engines_table, outcome_of
from engine.sessions import CallSession, SessionStore
from pbxsim.server import SimPBX
from pbxsim.script import SayText, WaitAgent, WaitAgentDone
from tests.conftest import AGENT_PASS, BIN, ROOT, engine_config, get_json, history_of, running_engine, sim_call, stop_processes, wait_for, wait_until


async def test_a_call_is_in_the_history_with_what_was_said_and_how_it_went(tmp_path, capsys, history_url):
    """A caller asks a question of the local models and hangs up: the record has the caller, the
    outcome, both sides of the transcript in order, the answered turn with its latency and stages,
    and the RTP figures; ``calls list``, ``show`` and ``export`` find it from the shell."""
    pbx = SimPBX(seed=3)
    await pbx.start(port=0)
    try:
        async with running_engine(pbx, tmp_path, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="stream", AIAGENT_HISTORY_URL=history_url) as eng:
            script = [WaitAgentDone(0.8, 30.0), SayText("What are your opening hours?"), WaitAgent(1.0, 40.0), WaitAgentDone(1.0, 60.0)]
            rec = pbx.place_call(script=script, caller_number="5550142")
            await wait_for(rec.finished.is_set, timeout=120)
            hist = await history_of(eng, rec.id)
    finally:
        await pbx.stop()
    assert hist.caller_number == "5550142" and hist.profile == "default" and hist.providers == ["local"]
    assert hist.outcome == "caller_hung_up" and hist.end_reason == "caller hung up"
    assert hist.ended_at is not None and 5 < hist.ended_at - hist.started_at < 120
    roles = [t.role for t in hist.transcript]
    assert roles[0] == "agent" and "caller" in roles and roles[-1] == "agent"
    assert "opening" in next(t.text for t in hist.transcript if t.role == "caller").lower()
    assert [t.at for t in hist.transcript] == sorted(t.at for t in hist.transcript)
    assert hist.started_at <= hist.transcript[0].at <= hist.ended_at
    answered = [t for t in hist.turns if t.stt_s is not None]
    assert answered and all(0 < t.latency_s < 10 for t in answered)
    # From the caller's last voiced frame: the end-of-speech wait (vad.end_ms and more) is a part of it.
    assert all(t.endpoint_s is not None and 0.4 < t.endpoint_s < t.latency_s for t in answered)
    assert answered[0].llm_first_sentence_s is not None and answered[0].tts_first_audio_s is not None
    assert hist.quality.packets_in > 50 and hist.quality.lost == 0 and hist.quality.packets_out > 100  # a DTX line: packets while the caller speaks
    assert hist.downstream_mode == "stream"

    (tmp_path / "cli.toml").write_text(f'[history]\nurl = "{history_url}"\n')
    cfg = str(tmp_path / "cli.toml")
    assert cli(["--config", cfg, "calls", "list"]) == 0
    listing = capsys.readouterr().out
    assert "5550142" in listing and "caller_hung_up" in listing and rec.id in listing
    assert cli(["--config", cfg, "calls", "list", "--search", "OPENING", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["call_id"] == rec.id
    assert cli(["--config", cfg, "calls", "list", "--search", "lighthouse"]) == 0
    assert "no calls" in capsys.readouterr().out
    assert cli(["--config", cfg, "calls", "list", "--caller", "0142", "--outcome", "transferred"]) == 0
    assert rec.id not in capsys.readouterr().out
    assert cli(["--config", cfg, "calls", "show", rec.id[:8]]) == 0
    shown = capsys.readouterr().out
    assert "caller hung up" in shown and "opening" in shown.lower() and "RTP in:" in shown
    assert cli(["--config", cfg, "calls", "export", rec.id, "--format", "json"]) == 0
    assert CallRecord.model_validate_json(capsys.readouterr().out) == hist
    assert cli(["--config", cfg, "calls", "show", "nosuchcall"]) == 1


def test_a_turns_end_of_speech_wait_is_shown_and_a_record_from_before_it_was_kept_still_reads(tmp_path):
    """A turn counts from the caller's last voiced frame, the wait for the end-of-speech decision
    its own column; a record written before that (no ``endpoint_s``) reads as it was."""
    from aiagent_tui.history_cli import show
    from engine.history import calls_table

    db = HistoryDb(f"sqlite:///{tmp_path / 'history.sqlite3'}")
    db.create()
    old = {"call_id": "old.1", "started_at": 1_000_000.0, "ended_at": 1_000_030.0, "duration_s": 30.0, "outcome": "caller_hung_up",
           "turns": [{"at": 1_000_010.0, "latency_s": 0.9, "stt_s": 0.3, "llm_first_sentence_s": 0.4, "tts_first_audio_s": 0.15, "playout_s": 0.05}]}
    new = CallRecord.model_validate({**old, "call_id": "new.1", "turns": [{**old["turns"][0], "latency_s": 1.4, "endpoint_s": 0.5}]})
    try:
        with db.engine.begin() as conn:
            conn.execute(calls_table.insert().values(call_id="old.1", engine="e", started_at=1_000_000.0, ended_at=1_000_030.0, caller_number="",
                                                     dialled="", profile="default", outcome="caller_hung_up", turns=1, record=json.dumps(old)))
        db.save([new])
        before, after = db.get("old.1"), db.get("new.1")
    finally:
        db.close()
    assert before is not None and after is not None
    assert before.turns[0].latency_s == 0.9 and before.turns[0].endpoint_s is None
    assert after.turns[0].latency_s == 1.4 and after.turns[0].endpoint_s == 0.5

    def table(rec: CallRecord) -> tuple[str, list[str], list[str]]:
        out = io.StringIO()
        show(rec, out)
        lines = out.getvalue().splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("turns ("))
        return lines[head], lines[head + 1].split(), lines[head + 2].split()

    title, cols, row = table(after)
    assert "from the caller's last voiced frame" in title
    assert cols[:4] == ["at", "to", "answer", "eos"] and row[1:4] == ["1.40", "0.50", "0.30"]
    assert table(before)[2][1:4] == ["0.90", "-", "0.30"]


def _engine(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--no-ui"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def heartbeat(db: HistoryDb) -> float | None:
    """The engine's last heartbeat in the history (wall clock)."""
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(engines_table.c.heartbeat))).scalar()


def test_kill_9_mid_call_loses_at_most_a_second_and_the_next_start_marks_it_interrupted(tmp_path, history_url):
    """The engine is killed (SIGKILL: no cleanup at all) in the middle of a call. Its record was
    at most about a second behind, and the next start marks it interrupted."""
    from tests.conftest import free_port

    ari_port, health_port = free_port(), free_port()
    sim = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(ari_port), "--rtp-start", "22400", "--rtp-end", "22600"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (tmp_path / "media").mkdir()
    env = {**os.environ, "ASTERISK_ARI_PORT": str(ari_port), "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(health_port),
           "AIAGENT_MEDIA_DIR": str(tmp_path / "media"), "AIAGENT_PROVIDER": "echo", "AIAGENT_HISTORY_URL": history_url}
    db = HistoryDb(history_url)
    eng = _engine(env)
    caller = None
    try:
        wait_until(lambda: get_json(f"http://127.0.0.1:{health_port}/health")[1]["ari_connected"])
        caller = sim_call(ari_port, "--wav", str(AGENT_PASS), "--hold", "30")
        live = wait_until(lambda: (rows := db.list()) and rows[0].outcome == "live" and rows[0], 20)
        # Up for 3 s and more: the engine's heartbeat (its last sign of life, once a second) says so.
        wait_until(lambda: heartbeat(db), until=lambda beat: beat is not None and beat - live.started_at > 3.0, what="a heartbeat 3 s into the call")
        eng.send_signal(signal.SIGKILL)
        killed_at = time.time()
        eng.wait(10)
        call_id = db.list()[0].call_id
        before = db.get(call_id)
        assert before is not None and before.outcome == "live" and before.ended_at is None

        env["RTP_PORT"] = str(free_port(socket.SOCK_DGRAM))
        eng = _engine(env)
        seen: list[CallRecord] = []  # as marked: the caller, still there, is then taken up again and the record goes on
        wait_until(lambda: (r := db.get(call_id)) is not None and r.outcome == "interrupted" and not seen.append(r), 20)
        after = seen[0]
        # When it ended, to the engine's last heartbeat (once a second) before the kill.
        assert after is not None and after.ended_at is not None and 0 <= killed_at - after.ended_at < 1.6
        # Up for 3 s and more before the kill; its length ends at that last heartbeat too.
        assert abs(after.duration_s - (after.ended_at - after.started_at)) < 0.05 and after.duration_s > 2.0
        assert "stopped during the call" in (after.end_reason or "")
        assert after.caller_number == before.caller_number and after.quality == before.quality  # what was written stays
    finally:
        db.close()
        stop_processes(caller, eng, sim)


class _FlakyDb(HistoryDb):
    """The real SQLite history whose writes fail while ``down`` (a full disk, a locked file, a
    database server gone)."""

    down = True

    def save(self, records: list[CallRecord], heartbeat: tuple[str, float] | None = None) -> dict[str, str]:
        if self.down:
            raise OSError(28, "No space left on device")
        return super().save(records, heartbeat)


async def test_a_failing_database_loses_no_call_and_no_record(history_url):
    store = SessionStore()
    db = _FlakyDb(history_url)
    rec = HistoryRecorder(store, db, "test:aiagent", 90, 1000)
    db.down = False
    assert await rec.open()
    db.down = True
    task = asyncio.create_task(rec.run())
    try:
        call = CallSession(call_id="c1", caller_channel_id="c1", caller_number="5550100")
        store.add(call)
        store.remove(call, "caller hung up")
        await wait_for(lambda: rec.failing)
        assert rec.last_error == "OSError: [Errno 28] No space left on device" and rec.status().records_held == 1
        assert rec.problems()[0].startswith("call history failing since ")
        assert await asyncio.to_thread(HistoryDb(db.url).get, "c1") is None
        db.down = False  # the disk was cleared: the next sync writes what was kept
        await wait_for(lambda: rec.written >= 1 and not rec.failing)
        assert rec.problems() == ()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await rec.close()
    got = HistoryDb(db.url).get("c1")
    assert got is not None and got.outcome == "caller_hung_up" and got.caller_number == "5550100"


async def test_retention_deletes_old_calls_and_the_oldest_beyond_the_cap(history_url):
    db = HistoryDb(history_url)
    db.create()
    now = time.time()
    db.save([CallRecord(call_id=f"c{i}", started_at=now - i * 86400, outcome="caller_hung_up") for i in range(10)])
    db.save([CallRecord(call_id="live-old", started_at=now - 30 * 86400, outcome="live")])
    assert db.prune(older_than=now - 7.5 * 86400, keep=1000) == 2  # c8, c9; a live call stays
    assert db.prune(older_than=0, keep=5) == 3  # the newest 5 stay, and a live call
    assert sorted(r.call_id for r in db.list()) == ["c0", "c1", "c2", "c3", "c4", "live-old"]
    db.close()


def test_outcomes_and_times_as_operators_type_them():
    assert outcome_of(None) == "live"
    assert outcome_of("caller hung up") == "caller_hung_up"
    assert outcome_of("transferred to billing (201@from-internal)") == "transferred"
    assert outcome_of("agent hung up (caller said goodbye)") == "agent_hung_up"
    assert outcome_of("hung up by operator") == "operator_hung_up"
    assert outcome_of("engine shutdown") == "shutdown"
    assert outcome_of("setup failed: ExternalMedia channel never entered Stasis") == "failed"
    assert outcome_of("provider error: LLM worker crashed") == "failed"
    now = 1_764_600_000.0
    assert parse_when("2h", now) == now - 7200 and parse_when("30m", now) == now - 1800 and parse_when("7d", now) == now - 7 * 86400
    assert parse_when("2026-11-30T02:13") == datetime(2026, 11, 30, 2, 13).timestamp()
    assert parse_when("02:13", now) == datetime.combine(datetime.fromtimestamp(now).date(), datetime.min.time()).timestamp() + 2 * 3600 + 13 * 60
    with pytest.raises(ValueError, match="cannot read"):
        parse_when("yesterday", now)


def test_a_database_url_is_checked_and_its_password_never_shown():
    with pytest.raises(ConfigError, match="history.url: .*not a database URL"):
        load_config(None, env={"AIAGENT_HISTORY_URL": "not a url"})
    cfg = load_config(None, env={"AIAGENT_HISTORY_URL": "postgresql+psycopg://aiagent:s3cret@db/history"})
    assert "s3cret" not in json.dumps(cfg.masked()) and cfg.masked()["history"]["url"] == "postgresql+psycopg://aiagent:***@db/history"


async def test_a_history_it_cannot_open_does_not_stop_the_engine_and_health_names_it(pbx, tmp_path, caplog):
    """A history is never a reason to answer no call: the engine starts, /health is degraded with
    the database named (its password never shown), and it keeps trying."""
    cfg = engine_config(pbx, tmp_path, AIAGENT_HISTORY_URL="postgresql+psycopg://aiagent:s3cret@127.0.0.1:1/history")
    eng = Engine(cfg)
    await eng.start()
    try:
        assert await eng.wait_ari_connected(5)
        s = eng.summary()
        assert s.status == "degraded" and s.history is not None and s.history.failing and not s.history.opened
        assert any(p.startswith("call history failing since") and "OperationalError" in p for p in s.problems), s.problems
        assert "cannot write to postgresql+psycopg://aiagent:***@127.0.0.1:1/history" in caplog.text and "s3cret" not in caplog.text
    finally:
        await eng.stop()


async def test_the_history_screen_flags_calls_and_follows_a_call_that_ends_while_it_is_open(tmp_path):
    """H, open while a call is live: the flag column marks the call the diagnosis flags (bad: its
    agent audio went out 239 ms late); the list reads itself again, so the live call turns to its
    outcome when its caller hangs up and a new call comes in at the top, with the filter and the
    highlighted call kept and the highlighted call's diagnosis under the list."""
    from textual.widgets import DataTable, Input, Static

    from aiagent_tui.app import AiAgentApp
    from aiagent_tui.runtime import Runtime
    from aiagent_tui.screens.history import HistoryScreen
    from engine.history import Quality, database_url
    from pbxsim.script import Pause
    from tests.conftest import until
    from tests.test_tui import app_config

    cfg = app_config(tmp_path)
    url = database_url(cfg)
    app = AiAgentApp(rt := Runtime(cfg, sim=True, demo_interval_s=None), dump_dir=tmp_path, history_url=url)
    db = HistoryDb(url)
    hour_ago = time.time() - 3600

    def record(call_id: str, started_at: float, **kw) -> CallRecord:
        return CallRecord(call_id=call_id, started_at=started_at, ended_at=started_at + 30, duration_s=30, profile="default",
                          outcome="caller_hung_up", end_reason="caller hung up", **kw)

    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: rt.engine is not None and rt.engine.ari_connected and rt.pbx is not None)
            await asyncio.to_thread(db.create)
            gap = record("gap-call", hour_ago, quality=Quality(packets_out=1500, underruns=3, max_pacing_error_ms=239.0))
            await asyncio.to_thread(db.save, [gap])
            live = rt.pbx.place_call(script=[Pause(8.0)], caller_number="5550177")
            await wait_for(lambda: asyncio.to_thread(db.get, live.id), interval=0.1, until=lambda r: r is not None and r.outcome == "live",
                           what="the live call's row in the history")

            await pilot.press("H")
            await until(pilot, lambda: isinstance(app.screen, HistoryScreen))
            screen = app.screen
            assert isinstance(screen, HistoryScreen)
            table = screen.query_one(DataTable)
            await until(pilot, lambda: table.row_count == 2)
            assert [str(c.label) for c in table.columns.values()] == ["flag", "started", "length", "outcome", "caller", "dialled", "profile", "turns", "via"]
            flag = table.get_cell("gap-call", "flag")
            assert flag.plain == "!! bad" and str(flag.style) == "bold red"
            assert table.get_cell(live.id, "length") == "live" and table.get_cell(live.id, "outcome").plain == "live"
            assert table.get_cell(live.id, "flag").plain == ""

            await pilot.press("slash", *"profile:default", "enter")
            await until(pilot, lambda: "profile default" in str(screen.query_one("#history-head", Static).content))
            await pilot.press("down")  # the older call: it stays highlighted as rows change
            assert screen.highlighted == "gap-call"
            verdict = screen.query_one("#history-verdict", Static)
            await until(pilot, lambda: str(verdict.content).startswith("diagnosis: bad: the agent's audio packets went out up to 239 ms late"))
            await asyncio.to_thread(db.save, [record("new-call", time.time()), record("other-profile", time.time()).model_copy(update={"profile": "sales"})])

            await until(pilot, lambda: table.get_cell(live.id, "outcome").plain == "caller hung up", timeout=30,
                        what="the live call's row turned to its outcome")
            assert table.get_cell(live.id, "length") != "live" and str(table.get_cell(live.id, "outcome").style) == "green"
            await until(pilot, lambda: table.row_count == 3)
            assert [k.value for k in table.rows] == ["new-call", live.id, "gap-call"]  # the filter kept: no call of profile sales
            assert screen.highlighted == "gap-call" and screen.query_one(Input).value == "profile:default"
            assert str(verdict.content).startswith("diagnosis: bad: ")
            await pilot.press("escape")
            await pilot.press("q", "y")
    finally:
        db.close()
