"""The terminal app, driven with Textual's Pilot against the built-in simulator."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from pydantic import SecretStr
from textual.widgets import DataTable, RichLog, Static

from aiagent_tui.runtime import Runtime
from aiagent_tui.app import AiAgentApp
from aiagent_tui.screens.confirm import ConfirmScreen
from aiagent_tui.screens.help import HelpScreen
from aiagent_tui.screens.provider import ProviderScreen
from aiagent_tui.service import run_headless
from engine.config import load_config
from engine.sessions import ConversationState
from tests.conftest import free_port, stop_processes, until, wait_for


def app_config(tmp_path: Path, provider: str = "tone"):
    # A Unix socket's path has at most 107 bytes: pytest's tmp_path can be longer.
    console = Path(tempfile.mkdtemp(prefix="aiagent-console-")) / "engine.sock"
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(free_port()), "RTP_PORT": "0", "HEALTH_PORT": "0",
                                 "AIAGENT_MEDIA_DIR": str(tmp_path / "media"), "AIAGENT_PROVIDER": provider,
                                 "AIAGENT_CONSOLE_SOCKET": str(console)})
    cfg.providers.tone.duration_ms = 4000
    return cfg


async def test_app_shows_live_calls_and_every_key_works(tmp_path):
    from pbxsim.script import Pause, Say, WaitAgent
    from tests.conftest import HELLO

    app = AiAgentApp(rt := Runtime(app_config(tmp_path), sim=True, demo_interval_s=None), dump_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: rt.engine is not None and rt.engine.ari_connected and rt.pbx is not None)
        eng, pbx = rt.engine, rt.pbx
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(1.0), Pause(8.0)], caller_number="5551234")
        await until(pilot, lambda: eng.store.get(rec.id) is not None)
        cid = rec.id
        table = app.query_one(DataTable)
        await until(pilot, lambda: cid in [k.value for k in table.rows])
        table.move_cursor(row=[k.value for k in table.rows].index(cid))
        await until(pilot, lambda: app.live.calls.selected == cid)
        # Panes fill from the engine's snapshots: RTP counters and the transcript.
        await until(pilot, lambda: eng.store.get(cid).rtp_in.packets > 20 and eng.store.get(cid).transcript)
        await until(pilot, lambda: eng.store.get(cid).conversation is ConversationState.AGENT_SPEAKING)
        await until(pilot, lambda: all(w in app.export_screenshot() for w in ("pkts", "beep", "5551234", "ARI", "failed")))

        # b: barge-in stops the agent's playback.
        await pilot.press("b")
        await until(pilot, lambda: eng.store.get(cid).barge_ins == 1 and not eng.store.get(cid).playbacks)
        # b again: the agent is silent now; nothing is stopped or counted.
        await pilot.press("b")
        await until(pilot, lambda: any("not speaking" in str(n.message) for n in app._notifications))
        assert eng.store.get(cid).barge_ins == 1

        # d: the call's dump.
        await pilot.press("d")
        await until(pilot, lambda: list(tmp_path.glob(f"call-{cid}-*.json")))
        assert any(f"dumped to {tmp_path.resolve()}/call-{cid}-" in str(n.message) for n in app._notifications)  # the whole path

        # m: no sound device here: a notice, no crash.
        await pilot.press("m")
        await until(pilot, lambda: any("cannot monitor" in str(n.message) for n in app._notifications))

        # ?: the help screen.
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")

        # p: echo for new calls (and this one).
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ProviderScreen))
        await pilot.press("up", "up")  # deepgram, echo, local, tone: from tone (in use) up twice is echo
        await pilot.press("enter")
        await until(pilot, lambda: eng.default_provider == "echo")
        assert eng.store.get(cid).provider.name == "echo"
        second = pbx.place_call(str(HELLO), hold_s=30.0)  # up until the app quits
        await until(pilot, lambda: eng.store.get(second.id) is not None)
        assert eng.store.get(second.id).provider.name == "echo"

        # h: hang up the selected call, once the operator says yes; the simulated PBX sees the
        # engine end it. The ended call stays listed and selected for a few seconds: a second h
        # does not land on the call that would have moved under the cursor.
        app.live.calls.selected = cid
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Hang up the call from 5551234?" in app.screen.question
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.pause()  # what the answer posted is handled: here, nothing
        assert eng.store.get(cid) is not None and rec.ended_by is None
        await pilot.press("h", "y")
        await until(pilot, lambda: rec.ended_by is not None)
        assert rec.ended_by == "ari"
        await until(pilot, lambda: "ended" in app.export_screenshot())
        assert app.live.calls.selected == cid and eng.store.get(second.id) is not None
        await pilot.press("h")
        await until(pilot, lambda: any("the call from 5551234 has ended" in str(n.message) for n in app._notifications))
        assert eng.store.get(second.id) is not None

        # q with a call still up asks first: no, the app goes on; yes, it hangs up and goes.
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "1 live call(s) will be hung up" in app.screen.question
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        assert app.is_running and eng.store.get(second.id) is not None
        await pilot.press("q", "y")
    assert pbx.leftovers() == ([], [])


async def test_headless_sim_service_answers_demo_calls(tmp_path):
    """--no-ui --sim runs the same Engine (and simulator, and demo caller) as the app above."""
    import json
    import os
    import signal
    import urllib.request

    cfg = app_config(tmp_path)
    cfg.health.port = free_port()
    task = asyncio.create_task(run_headless(Runtime(cfg, sim=True, demo_interval_s=0.5)))
    url = f"http://127.0.0.1:{cfg.health.port}/health"

    def calls_total() -> int:
        try:
            return json.loads(urllib.request.urlopen(url, timeout=1).read())["calls_total"]
        except OSError:
            return 0

    await wait_for(lambda: asyncio.to_thread(calls_total), interval=0.2, until=lambda n: n >= 2, what="two demo calls answered")
    os.kill(os.getpid(), signal.SIGTERM)  # as systemd stops it
    assert await asyncio.wait_for(task, 20) == 0


async def test_attach_shows_a_headless_engines_calls_controls_them_and_detaches(tmp_path):
    """``aiagent-tui attach``: the app on an engine that runs without it (here the headless
    service's Runtime in this process), over its console socket. Quitting detaches: the engine
    and its calls go on. When the engine goes, the app says so and exits non-zero."""
    from pbxsim.script import Pause, Say, WaitAgent
    from aiagent_tui.attach import AttachRuntime
    from tests.conftest import HELLO

    cfg = app_config(tmp_path)
    rt = Runtime(cfg, sim=True, demo_interval_s=None)
    eng = await rt.start()
    try:
        assert await eng.wait_ari_connected(10)
        sock = Path(cfg.console.socket)
        assert sock.stat().st_mode & 0o777 == 0o600  # only the engine's user (and root) may attach
        pbx = rt.pbx
        first = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(1.0), Pause(20.0)], caller_number="5550142")

        app = AiAgentApp(AttachRuntime(sock), dump_dir=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            table = app.query_one(DataTable)
            await until(pilot, lambda: first.id in [k.value for k in table.rows])
            table.move_cursor(row=[k.value for k in table.rows].index(first.id))
            await until(pilot, lambda: app.live.calls.selected == first.id)
            # The panes fill from the engine's snapshots, the log from its events.
            await until(pilot, lambda: "beep" in app.export_screenshot() and "pkts" in app.export_screenshot())
            screen = app.export_screenshot().replace("&#160;", " ")
            assert "5550142" in screen and "attached to the engine" in screen
            # m: the call's audio would come over the socket; this machine has no sound device to play it.
            await pilot.press("m")
            await until(pilot, lambda: any("no sound device on this machine" in str(n.message) for n in app._notifications))
            # R: the engine reads its config again (this one was started without a file: refused, said).
            await pilot.press("R")
            await until(pilot, lambda: any("without a config file" in str(n.message) for n in app._notifications))
            assert eng.last_reload is not None and eng.last_reload.refused is not None
            # h: the engine hangs the call up.
            await pilot.press("h", "y")
            await until(pilot, lambda: first.ended_by is not None)
            assert first.ended_by == "ari"
            await pilot.press("q")
        assert app.exit_code == 0
        # Detached: the engine goes on and answers the next call.
        assert eng.ari_connected and rt.engine is eng
        second = pbx.place_call(str(HELLO), hold_s=1.0)
        await asyncio.wait_for(second.finished.wait(), 20)
        assert second.report(pbx)["answered"]

        # The engine stops under an attached app: it exits 1 and says why.
        app = AiAgentApp(AttachRuntime(sock))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.engine is not None)
            await rt.stop()
            await until(pilot, lambda: app.exit_code == 1)
    finally:
        await rt.stop()
    assert not sock.exists()
    # No engine there: a clear refusal.
    app = AiAgentApp(AttachRuntime(sock))
    async with app.run_test() as pilot:
        await until(pilot, lambda: app.exit_code == 1)


async def test_history_screen_lists_past_calls_filters_them_and_opens_one(tmp_path):
    """H: the calls the history keeps, newest first (here two calls to the engine the app runs,
    one still live); a filter line narrows them; enter opens one in full; escape goes back."""
    from pbxsim.script import Pause, Say, WaitAgent
    from aiagent_tui.screens.call_detail import CallDetailScreen
    from aiagent_tui.screens.history import HistoryScreen
    from engine.history import HistoryDb, database_url
    from tests.conftest import HELLO, wait_for

    cfg = app_config(tmp_path)
    app = AiAgentApp(rt := Runtime(cfg, sim=True, demo_interval_s=None), dump_dir=tmp_path, history_url=database_url(cfg))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: rt.engine is not None and rt.engine.ari_connected and rt.pbx is not None)
        pbx = rt.pbx
        done = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(1.0)], caller_number="5550142")
        await until(pilot, lambda: done.finished.is_set())
        live = pbx.place_call(script=[Pause(30.0)], caller_number="5559876")
        await until(pilot, lambda: rt.engine.store.get(live.id) is not None)
        # The history screen reads its rows once: the live call's row (written within a second) first.
        db = HistoryDb(database_url(cfg))
        try:
            await wait_for(lambda: asyncio.to_thread(db.get, live.id), interval=0.1, until=lambda r: r is not None,
                           what="the live call's row in the history")
        finally:
            db.close()

        await pilot.press("H")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert [k.value for k in table.rows] == [live.id, done.id]  # newest first
        screen = app.export_screenshot().replace("&#160;", " ")
        assert "5550142" in screen and "caller hung up" in screen and "live" in screen
        assert "hang up" not in screen  # the live calls' keys do not act from here

        await pilot.press("slash")
        await pilot.press(*"caller:0142", "enter")
        await until(pilot, lambda: table.row_count == 1)
        assert [k.value for k in table.rows] == [done.id]
        await pilot.press("slash", *" outcome:nonsense", "enter")
        await until(pilot, lambda: any("outcome 'nonsense'" in str(n.message) for n in app._notifications))
        assert table.row_count == 1  # a bad filter keeps what was shown

        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CallDetailScreen))
        await until(pilot, lambda: "transcript" in app.export_screenshot())
        detail = app.export_screenshot().replace("&#160;", " ")
        assert done.id in detail and "5550142" in detail and "beep" in detail and "RTP in:" in detail
        shown = str(app.screen.query_one("#detail", Static).content)
        # What calls diagnose prints, on top (a busy machine's pacing error may flag the call: the headline says so).
        record = app.screen.record
        assert record is not None and shown.startswith(f"diagnosis: {app.screen.diagnose_call(record).headline}\n")
        await pilot.press("escape")
        assert isinstance(app.screen, HistoryScreen)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HistoryScreen))
        await pilot.press("q", "y")


async def test_what_an_operator_must_fix_is_on_screen_not_only_in_the_log_file(tmp_path):
    """ARI unreachable, then a wrong password: the header says what is wrong and what to set, and
    the engine's warnings (here: the reconnects) reach the log pane in full."""
    from pbxsim.server import SimPBX

    cfg = app_config(tmp_path)  # its ARI port has nothing behind it
    app = AiAgentApp(Runtime(cfg), dump_dir=tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: "cannot reach ARI at 127.0.0.1" in app.export_screenshot().replace("&#160;", " "))
        screen = app.export_screenshot().replace("&#160;", " ")
        assert "(connection refused)" in screen
        log = "".join(line.text for line in app.query_one(RichLog).lines)  # its lines wrap
        assert "ARI events disconnected (cannot reach ARI at 127.0.0.1" in log and "asterisk.ari_port" in log
        await pilot.press("q")

    pbx = SimPBX(password="right")
    await pbx.start(port=0)
    try:
        cfg = app_config(tmp_path)
        cfg.asterisk.ari_port = pbx.port
        cfg.asterisk.ari_password = SecretStr("wrong")
        app = AiAgentApp(Runtime(cfg), dump_dir=tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: "(401)" in app.export_screenshot())
            log = "".join(line.text for line in app.query_one(RichLog).lines)  # its lines wrap
            assert "ARI refused user 'aiagent' (401): set asterisk.ari_username and ari_password" in log
            await pilot.press("q")
    finally:
        await pbx.stop()


async def test_attached_the_engines_warnings_reach_the_log_pane(tmp_path):
    """An operator attached to a headless engine (another process) sees what it logs at WARNING
    and up, not only its call events: here a stray RTP datagram the engine drops and says so."""
    import socket
    import subprocess

    from aiagent_tui.attach import AttachRuntime
    from tests.conftest import free_port
    from tests.test_reload import _write
    from tests.conftest import BIN, get_json, wait_until

    sim_port, health_port, rtp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    sim = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(sim_port), "--rtp-start", "22600", "--rtp-end", "22700"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "config.toml"
    (tmp_path / "media").mkdir()
    _write(path, sim_port, tmp_path, "Hello.")
    path.write_text(path.read_text().replace('default = "local"', 'default = "echo"').replace("port = 0\n[health]", f"port = {rtp_port}\n[health]")
                    .replace("port = 0\n[console]", f"port = {health_port}\n[console]"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIAGENT_", "ASTERISK_", "RTP_", "HEALTH_"))}
    eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(path), "--no-ui"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_until, lambda: get_json(f"http://127.0.0.1:{health_port}/health")[1]["ari_connected"])
        app = AiAgentApp(AttachRuntime(tmp_path / "console.sock"))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.engine is not None)
            await pilot.pause(0.5)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x80\x00" + bytes(170), ("127.0.0.1", rtp_port))
            await until(pilot, lambda: any("dropped RTP from 127.0.0.1" in line.plain for line in app.log_lines))
            line = next(line for line in app.log_lines if "dropped RTP from" in line.plain)
            assert "no call has that address" in line.plain and any(str(span.style) == "yellow" for span in line.spans)
            await pilot.press("q")
    finally:
        stop_processes(eng, sim, timeout=20)


async def test_the_first_simulated_call_comes_as_soon_as_the_engine_answers(tmp_path):
    """--sim: the demo caller waited a whole interval (8 s) after start because ARI was not yet
    connected at its first turn; now it calls as soon as the engine answers."""
    app = AiAgentApp(rt := Runtime(app_config(tmp_path), sim=True, demo_interval_s=120.0), dump_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: rt.engine is not None and rt.engine.ari_connected)
        # Well within the interval: a call that waited for it would time this out.
        await until(pilot, lambda: "5550001" in app.export_screenshot(), timeout=15.0)
        await pilot.press("q", "y")
