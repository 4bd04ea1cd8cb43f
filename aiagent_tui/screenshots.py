"""Refreshes screenshots/: the main screen with live calls and the help screen (at 120x40 and
80x24), the provider picker (and its refusal of a provider that is not ready), the doctor output,
the call history and one call from it and its recording replayed.

    python -m aiagent_tui.screenshots [--out screenshots] [--provider local]
    python -m aiagent_tui.screenshots --history-flags [--provider echo]   # only history-flags.svg
    python -m aiagent_tui.screenshots --layout   # only main and help, at 120x40 and 80x24
    python -m aiagent_tui.screenshots --transports [--provider echo]   # only transports.svg and transports-80x24.svg

Drives the real app (Textual's Pilot, headless) against the built-in simulator, so the pictures
show what an operator sees. Textual saves SVG; convert with rsvg-convert to look at them as PNG.
"""

from __future__ import annotations

import argparse
import io
import asyncio
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
from rich.console import Console

from textual.pilot import Pilot
from textual.widgets import DataTable

from aiagent_tui.app import AiAgentApp
from aiagent_tui.screens.call_detail import CallDetailScreen
from aiagent_tui.monitor import Callback
from pbxsim.demo import QUESTIONS, SOUNDS
from pbxsim.script import Pause, SayText, Step, WaitAgent, WaitAgentDone
from aiagent_tui.runtime import Runtime
from engine.config import load_config
from engine.history import database_url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def capture(out: Path, provider: str) -> None:
    media = Path(tempfile.mkdtemp())
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(_free_port()), "RTP_PORT": "0", "HEALTH_PORT": str(_free_port()),
                                 "AIAGENT_MEDIA_DIR": str(media), "AIAGENT_PROVIDER": provider,
                                 "AIAGENT_HISTORY_PATH": str(Path(tempfile.mkdtemp()) / "history.sqlite3")})
    cfg.profiles["default"].record = True
    app = AiAgentApp(Runtime(cfg, sim=True, demo_interval_s=4.0), history_url=database_url(cfg))
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        loop = asyncio.get_running_loop()
        end = loop.time() + 90
        await _live_calls(app, pilot, loop.time() + 90)
        await _main_and_help(app, pilot, out)
        # the provider picker refusing one that is not ready (no DEEPGRAM_API_KEY here)
        await pilot.press("p")
        await pilot.pause(0.3)
        app.save_screenshot("provider.svg", str(out))
        assert app.engine is not None
        current = sorted(app.engine.provider_readiness()).index(app.engine.default_provider)
        await pilot.press(*["up"] * current, "enter")  # to deepgram, the first
        await pilot.pause(0.5)
        app.save_screenshot("provider-refused.svg", str(out))
        # doctor, against the simulator this app runs
        from aiagent_tui import doctor

        console = Console(record=True, width=110, force_terminal=True, file=io.StringIO())
        cfg.rtp.port = _free_port()
        cfg.health.port = _free_port()
        await asyncio.to_thread(lambda: doctor.render(doctor.run_checks(cfg), console))
        console.save_svg(str(out / "doctor.svg"), title="aiagent-tui doctor")
        # the call history, once a few demo calls have ended, and the newest ended one in full
        assert app.engine is not None
        while app.engine.store.calls_total - len(app.engine.store) < 3 and loop.time() < end + 60:
            await pilot.pause(0.5)
        await pilot.press("H")
        await pilot.pause(1.0)
        app.save_screenshot("history.svg", str(out))
        table = app.screen.query_one("#history-table", DataTable)
        ended = next(i for i, key in enumerate(table.rows) if app.engine.store.get(str(key.value)) is None)
        table.move_cursor(row=ended)
        await pilot.press("enter")
        await pilot.pause(1.0)
        app.save_screenshot("history-call.svg", str(out))
        # its recording replayed (a machine with no sound card: a silent one that keeps time)
        call_id = str(list(table.rows)[ended].value)
        await pilot.press("escape")
        detail = CallDetailScreen(database_url(cfg), call_id, open_output=_SilentCard)
        app.push_screen(detail)
        while (detail.record is None or detail.current_line is None or detail.current_line < 1) and loop.time() < end + 120:
            if detail.record is not None and detail.replay is None:
                await pilot.press("p")
            await pilot.pause(0.3)
        app.save_screenshot("history-replay.svg", str(out))
        await pilot.press("escape", "escape")
        await pilot.press("q")


async def capture_layout(out: Path, provider: str) -> None:
    """The main screen and the help at 120x40 and, after a resize, at 80x24."""
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(_free_port()), "RTP_PORT": "0", "HEALTH_PORT": str(_free_port()),
                                 "AIAGENT_MEDIA_DIR": str(Path(tempfile.mkdtemp())), "AIAGENT_PROVIDER": provider,
                                 "AIAGENT_CONSOLE_SOCKET": str(Path(tempfile.mkdtemp()) / "console.sock")})  # beside any engine running here
    app = AiAgentApp(Runtime(cfg, sim=True, demo_interval_s=4.0))
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await _live_calls(app, pilot, asyncio.get_running_loop().time() + 90)
        await _main_and_help(app, pilot, out)
        await pilot.press("q", "y")


async def capture_transports(out: Path, provider: str) -> None:
    """Calls on each media transport at once (RTP, AudioSocket, WebSocket: docs/transports.md), the
    AudioSocket call selected: the list's via column and its media pane, at 120x40; then the
    WebSocket call at 80x24 (the list only)."""
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(_free_port()), "RTP_PORT": "0", "HEALTH_PORT": str(_free_port()),
                                 "AIAGENT_MEDIA_DIR": str(Path(tempfile.mkdtemp())), "AIAGENT_PROVIDER": provider,
                                 "AIAGENT_CONSOLE_SOCKET": str(Path(tempfile.mkdtemp()) / "console.sock")})
    cfg.audiosocket.port = 0
    cfg.websocket.port = 0
    # A profile per transport, picked by the call's Stasis argument, as a site would route them.
    for transport in ("audiosocket", "websocket"):
        cfg.profiles[f"via-{transport}"] = cfg.profiles["default"].model_copy(update={"match": [f"via-{transport}"], "transport": transport})
    runtime = Runtime(cfg, sim=True, demo_interval_s=None)
    app = AiAgentApp(runtime)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240

        def taking_calls() -> bool:  # ARI up and the provider's models loaded: a call placed sooner would be turned away
            s = app.engine.summary() if app.engine is not None else None
            return s is not None and s.ari_connected and s.providers[s.default_provider].ready

        while not taking_calls() and loop.time() < deadline:
            await pilot.pause(0.2)
        pbx = runtime.pbx
        assert pbx is not None and app.engine is not None
        for n, args in enumerate(([], ["via-audiosocket"], ["via-websocket"]), 1):
            # A question, its answer, then the caller stays on the line while the pictures are taken.
            script: list[Step] = [WaitAgentDone(0.4, 8.0), SayText(QUESTIONS[n]), WaitAgent(0.3, 15.0), WaitAgentDone(1.0, 20.0), Pause(60.0)]
            pbx.place_call(script=script, caller_number=f"555{n:04d}", app=cfg.asterisk.app, dialled="100", args=args or None)
            await pilot.pause(1.5)

        def on(transport: str) -> str | None:
            assert app.engine is not None
            # The caller asked and the agent answered: both sides heard, a turn on the timeline.
            return next((s.call_id for s in app.engine.store.snapshots() if s.transport == transport and s.turns and s.conversation.state == "listening"), None)

        while not all(on(t) for t in ("rtp", "audiosocket", "websocket")) and loop.time() < deadline:
            await pilot.pause(0.5)
        for transport, size, name in (("audiosocket", (120, 40), "transports.svg"), ("websocket", (80, 24), "transports-80x24.svg")):
            call_id = on(transport)
            if call_id is None:  # the transport did not carry a call here: say so rather than show a picture without it
                seen = [(c.transport, c.conversation.state, c.rtp.packets_in) for c in app.engine.store.snapshots()]
                raise SystemExit(f"no {transport} call answered within the time (calls up: {seen}): see the app's log")
            await pilot.resize_terminal(*size)
            await pilot.pause(0.8)
            table = app.live.calls.table
            table.move_cursor(row=[k.value for k in table.rows].index(call_id))
            await pilot.pause(1.0)
            app.save_screenshot(name, str(out))
        await pilot.press("q", "y")


async def _live_calls(app: AiAgentApp, pilot: Pilot[int], deadline: float) -> None:
    """Until two calls are up and the selected one has had a turn (or the deadline)."""

    def ready() -> bool:
        snaps = app.engine.store.snapshots() if app.engine else []
        sel = next((s for s in snaps if s.call_id == app.live.calls.selected), None)
        return len(snaps) >= 2 and sel is not None and bool(sel.turns) and {t.role for t in sel.transcript} == {"caller", "agent"}

    while not ready() and asyncio.get_running_loop().time() < deadline:
        await pilot.pause(0.2)
    await pilot.pause(0.5)


async def _main_and_help(app: AiAgentApp, pilot: Pilot[int], out: Path) -> None:
    """main.svg and help.svg at 120x40; main-80x24.svg and help-80x24.svg after a resize to an SSH
    session's 80x24 (the compact layout and footer, the help scrolled to its top); 120x40 again."""
    for size, suffix in (((120, 40), ""), ((80, 24), "-80x24")):
        await pilot.resize_terminal(*size)
        await pilot.pause(0.5)
        app.save_screenshot(f"main{suffix}.svg", str(out))
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        app.save_screenshot(f"help{suffix}.svg", str(out))
        await pilot.press("escape")
    await pilot.resize_terminal(120, 40)
    await pilot.pause(0.5)


class _SilentCard:
    """Plays nothing, in real time."""

    device = "no sound card (silent)"

    def __init__(self, callback: Callback) -> None:
        self._stop = threading.Event()

        def run() -> None:
            out = np.zeros((160, 1), dtype=np.int16)
            while not self._stop.wait(0.02):
                callback(out, 160, None, None)

        threading.Thread(target=run, daemon=True).start()

    def close(self) -> None:
        self._stop.set()


async def capture_servers(out: Path) -> None:
    """A remote pipeline on this project's model servers; its LLM server is killed mid-call: the
    header shows the server down and where new calls go instead."""
    from aiagent_tui.model_servers import ModelServers, server_specs
    from providers.config import ModelServerConfig, PipelineConfig

    media = Path(tempfile.mkdtemp())
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(_free_port()), "RTP_PORT": "0", "HEALTH_PORT": str(_free_port()),
                                 "AIAGENT_MEDIA_DIR": str(media), "AIAGENT_PROVIDER": "local"})
    specs = server_specs(cfg.providers.local, llm_port=_free_port(), stt_port=_free_port(), tts_port=_free_port(), threads=1)
    with ModelServers(specs, media / "server-logs") as servers:
        for sp in specs:
            cfg.providers.servers[sp.name] = ModelServerConfig(api=sp.api, url=sp.url, model=sp.model)  # type: ignore[arg-type]
        cfg.providers.pipelines["remote"] = PipelineConfig(stt="stt", llm="llm", tts="tts", fallback="local")
        cfg.providers.default = "remote"
        app = AiAgentApp(Runtime(cfg, sim=True, demo_interval_s=5.0))
        async with app.run_test(size=(120, 40), notifications=True) as pilot:
            loop = asyncio.get_running_loop()

            async def until(pred, timeout: float = 90) -> None:
                end = loop.time() + timeout
                while not pred() and loop.time() < end:
                    await pilot.pause(0.2)

            def on(provider: str) -> bool:
                snaps = app.engine.store.snapshots() if app.engine else []
                return any(s.provider == provider and s.turns for s in snaps)

            await until(lambda: on("remote"))
            servers.kill("llm")
            await until(lambda: on("local"))
            await pilot.pause(0.5)
            app.save_screenshot("model-server-down.svg", str(out))
            await pilot.press("q")


async def capture_history_flags(out: Path, provider: str) -> None:
    """The call history with the diagnosis's flag column: demo calls, one over a line losing one
    packet in 40 (warn), one losing one in 8 (bad), one still live; the bad one highlighted, its
    diagnosis under the list."""
    from pbxsim.demo import demo_script
    from pbxsim.script import Pause

    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(_free_port()), "RTP_PORT": "0", "HEALTH_PORT": str(_free_port()),
                                 "AIAGENT_MEDIA_DIR": str(Path(tempfile.mkdtemp())), "AIAGENT_PROVIDER": provider,
                                 "AIAGENT_HISTORY_PATH": str(Path(tempfile.mkdtemp()) / "history.sqlite3")})
    rt = Runtime(cfg, sim=True, demo_interval_s=None)
    app = AiAgentApp(rt, history_url=database_url(cfg))
    async with app.run_test(size=(120, 40)) as pilot:
        loop = asyncio.get_running_loop()

        async def until(pred, timeout: float = 90) -> None:
            end = loop.time() + timeout
            while not pred() and loop.time() < end:
                await pilot.pause(0.2)

        await until(lambda: rt.engine is not None and rt.engine.ari_connected and rt.pbx is not None)
        assert rt.pbx is not None
        n = 0
        bad = ""
        for loss_every, calls in ((0, 2), (40, 1), (0, 1), (8, 1)):
            rt.pbx.faults.rtp_loss_every = loss_every
            placed = []
            for _ in range(calls):
                n += 1
                placed.append(rt.pbx.place_call(script=demo_script(), caller_number=f"555{n:04d}", app=cfg.asterisk.app, dialled="100"))
            await until(lambda placed=placed: all(c.finished.is_set() for c in placed))
            bad = placed[-1].id
        rt.pbx.faults.rtp_loss_every = 0
        rt.pbx.place_call(script=[Pause(60.0)], caller_number="5550099", app=cfg.asterisk.app, dialled="100")
        await pilot.pause(2.0)  # the live call's row: written within a second
        await pilot.press("H")
        await pilot.pause(1.0)
        table = app.screen.query_one("#history-table", DataTable)
        await until(lambda: table.row_count == n + 1)
        table.move_cursor(row=[k.value for k in table.rows].index(bad))
        await pilot.pause(2.5)  # a refresh: the flags as the list keeps them
        app.save_screenshot("history-flags.svg", str(out))
        await pilot.press("escape")
        await pilot.press("q")


async def capture_operator(out: Path, provider: str) -> None:
    """The operator in the loop on a simulated call: the whisper dialog (w), the bring-in dialog
    (i), and the call taken over (k) while the caller speaks (a silent microphone and speaker
    stand in for this machine's: it has none)."""
    from pbxsim.media import load_wav_ulaw
    from pbxsim.script import Pause, SayText, WaitAgent, WaitAgentDone
    from providers.profile import Department

    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(_free_port()), "RTP_PORT": "0", "HEALTH_PORT": str(_free_port()),
                                 "AIAGENT_MEDIA_DIR": str(Path(tempfile.mkdtemp())), "AIAGENT_PROVIDER": provider,
                                 "AIAGENT_CONSOLE_SOCKET": str(Path(tempfile.mkdtemp()) / "console.sock")})  # beside any engine running here
    cfg.profiles["default"].departments = {
        "front-desk": Department(description="appointments and reception", context="from-internal", extension="200"),
        "billing": Department(description="invoices, payments and refunds", context="from-internal", extension="201"),
        "nurse-line": Department(description="symptoms and medication questions", endpoint="PJSIP/202"),
    }
    rt = Runtime(cfg, sim=True, demo_interval_s=None)
    app = AiAgentApp(rt)
    app.live.open_input = app.live.open_output = _Headset
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        loop = asyncio.get_running_loop()

        async def until(pred, timeout: float = 120) -> None:
            end = loop.time() + timeout
            while not pred() and loop.time() < end:
                await pilot.pause(0.2)

        await until(lambda: rt.engine is not None and rt.engine.ari_connected and rt.pbx is not None)
        assert rt.pbx is not None and rt.engine is not None
        eng = rt.engine
        rt.pbx.place_call(script=[WaitAgentDone(0.4, 8.0), SayText("Hi, what time do you open on Saturday?"), WaitAgent(0.3, 15.0), WaitAgentDone(1.0, 20.0), Pause(90.0)],
                          caller_number="5550187", app=cfg.asterisk.app, dialled="100")
        rec = rt.pbx.place_call(script=[WaitAgentDone(0.4, 8.0), SayText("Hello, I have an appointment at three with Doctor Patel. Is she on time today?"),
                                        WaitAgent(0.3, 15.0), WaitAgentDone(1.0, 20.0), Pause(90.0)],
                                caller_number="5550142", app=cfg.asterisk.app, dialled="100")

        def answered() -> bool:
            snap = eng.store.snapshot(rec.id)
            return snap is not None and [t.role for t in snap.transcript].count("agent") >= 2

        await until(answered)
        call = eng.store.get(rec.id)
        assert call is not None
        table = app.live.calls.table
        await until(lambda: rec.id in [k.value for k in table.rows])
        table.move_cursor(row=[k.value for k in table.rows].index(rec.id))
        await until(lambda: app.live.calls.selected == rec.id)
        await pilot.pause(1.0)
        # w: a line for the agent
        await pilot.press("w")
        await pilot.pause(0.3)
        await pilot.press(*"Doctor Patel is running about ten minutes late today.")
        await pilot.pause(0.3)
        app.save_screenshot("whisper.svg", str(out))
        await pilot.press("enter")
        await until(lambda: any(t.by for t in call.transcript))
        # i: bring a person in
        await pilot.press("i")
        await pilot.pause(0.3)
        await pilot.press("tab", "down", "down", "enter", "shift+tab")  # how: snoop
        await pilot.pause(0.3)
        app.save_screenshot("bring-in.svg", str(out))
        await pilot.press("escape")
        # k: taken over; the caller speaks to the operator (transcribed, not answered)
        await until(lambda: not call.conversation.name.startswith("AGENT"))
        await pilot.press("k")
        await until(lambda: call.operator != "")
        assert rec.media is not None
        rec.media.say(load_wav_ulaw(SOUNDS / "demo-thanks.wav"))
        taken = len(call.transcript)
        await until(lambda: any(t.role == "caller" for t in call.transcript[taken:]))
        await pilot.pause(1.0)
        app.save_screenshot("taken-over.svg", str(out))
        await pilot.press("k")
        await pilot.pause(0.5)
        await pilot.press("q", "y")


class _Headset(_SilentCard):
    device = "headset (silent here)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="screenshots")
    ap.add_argument("--provider", default="local")
    ap.add_argument("--servers", action="store_true", help="only model-server-down.svg: a pipeline on model servers, one of them killed")
    ap.add_argument("--operator", action="store_true", help="only whisper.svg, bring-in.svg and taken-over.svg: the operator in the loop")
    ap.add_argument("--history-flags", action="store_true", help="only history-flags.svg: the call history with calls the diagnosis flags")
    ap.add_argument("--layout", action="store_true", help="only main.svg, help.svg, main-80x24.svg and help-80x24.svg")
    ap.add_argument("--transports", action="store_true", help="only transports.svg and transports-80x24.svg: calls on RTP, AudioSocket and WebSocket at once")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.servers:
        asyncio.run(capture_servers(out))
        print(f"wrote {out}/model-server-down.svg")
        return 0
    if args.history_flags:
        asyncio.run(capture_history_flags(out, args.provider))
        print(f"wrote {out}/history-flags.svg")
        return 0
    if args.operator:
        asyncio.run(capture_operator(out, args.provider))
        print(f"wrote {out}/whisper.svg, bring-in.svg, taken-over.svg")
        return 0
    if args.transports:
        asyncio.run(capture_transports(out, args.provider))
        print(f"wrote {out}/transports.svg, transports-80x24.svg")
        return 0
    if args.layout:
        asyncio.run(capture_layout(out, args.provider))
        print(f"wrote {out}/main.svg, help.svg, main-80x24.svg, help-80x24.svg")
        return 0
    asyncio.run(capture(out, args.provider))
    print(f"wrote {out}/main.svg, help.svg, main-80x24.svg, help-80x24.svg, provider.svg, provider-refused.svg, doctor.svg, history.svg, history-call.svg, history-replay.svg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
