"""The terminal app: the engine runs inside Textual's event loop; the live calls' screen renders
its snapshots at 10 Hz, the app follows its events for the log and live transcripts, and the
screens steer it with its commands. The screens are in screens/, their look in app.tcss."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.driver import Driver
from textual.drivers.linux_driver import LinuxDriver
from textual.screen import Screen

from aiagent_tui.paths import state_dir
from aiagent_tui.screens.call_detail import Diagnose, default_norms
from aiagent_tui.screens.calls import CallsScreen
from aiagent_tui.screens.confirm import ConfirmScreen
from aiagent_tui.screens.help import HelpScreen
from aiagent_tui.screens.host import CallsHost
from aiagent_tui.screens.log import LOG_KEPT, LogScreen
from aiagent_tui.screens.provider import ProviderScreen  # noqa: F401  (tests open it from here)
from aiagent_tui.terminal import PaneHandler, TerminalDriver
from engine.api import EngineRuntime, EngineView
from engine.sessions import CallLog

log = logging.getLogger(__name__)


class AiAgentApp(App[int]):
    TITLE = "aiagent-tui"
    CSS_PATH = "app.tcss"
    # On every screen (the live calls' screen has the rest of the keys, help among them first).
    BINDINGS = [Binding("question_mark", "help", "help"), Binding("q", "quit", "quit")]

    def __init__(self, runtime: EngineRuntime, *, dump_dir: Path | None = None, history_url: str | None = None, diagnose_call: Diagnose = default_norms) -> None:
        super().__init__()
        self.runtime = runtime  # starts the engine (and the simulator with --sim) in this app's loop
        self.engine: EngineView | None = None
        # dump_dir resolved: the notice gives the whole path
        self.live = CallsScreen(dump_dir=(dump_dir or state_dir()).resolve(), history_url=history_url, diagnose_call=diagnose_call)
        self.exit_code = 0
        self._stopping = False  # a signal asked the app to stop
        self._log_handler: logging.Handler = logging.NullHandler()
        self.log_lines: deque[Text] = deque(maxlen=LOG_KEPT)  # for the full log view (L)

    def get_default_screen(self) -> Screen:
        return self.live

    # ---- engine lifecycle (inside the app's own loop)
    async def on_ready(self) -> None:
        """The live calls' screen is up (its log pane among it): the engine starts."""
        self._log_handler = PaneHandler(self, self.write_log)
        logging.getLogger().addHandler(self._log_handler)
        try:
            self.engine = await self.runtime.start()
        except Exception as e:
            self.exit_code = 1
            self.exit(message=f"aiagent-tui: {e}")
            return
        # The operator's terminal went away (SIGHUP: an SSH session dropped) or the system stops
        # the app (SIGTERM): hang up as q does. By default either would end the process at once,
        # and the callers would stay in Stasis, in silence, with their channels and bridges.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_on_signal, sig)
        self.follow_events()
        self.watch_fatal()
        self.set_interval(0.1, self.refresh_panes)
        self.write_log(None, f"engine up; {self.runtime.describe()}")

    def _stop_on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:  # the terminal's hangup and the shell's, both SIGHUP
            return
        self._stopping = True
        live = len(self.engine.store) if self.engine is not None else 0
        why = "the terminal hung up" if sig == signal.SIGHUP else "asked to stop"
        if self.runtime.ends_calls:
            log.warning("%s (%s): stopping the engine, hanging up %d call(s)", sig.name, why, live)
        else:
            log.warning("%s (%s): detaching; the engine and its %d call(s) go on", sig.name, why, live)
        self.call_later(self._quit)

    def get_driver_class(self) -> type[Driver]:
        # TerminalDriver where Textual would draw on a Linux terminal; TEXTUAL_DRIVER (textual
        # serve, a web browser) still chooses its own.
        cls = super().get_driver_class()
        return TerminalDriver if cls is LinuxDriver else cls

    async def on_unmount(self) -> None:
        await self.shutdown()
        # Only now: a second SIGHUP (the shell passes the terminal's on to its jobs) must not
        # end the process while it hangs up.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    async def shutdown(self) -> None:
        logging.getLogger().removeHandler(self._log_handler)
        self.live.stop_monitor()
        self.engine = None
        await self.runtime.stop()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        live = len(self.engine.store) if self.engine is not None else 0
        if live and self.runtime.ends_calls:
            self.push_screen(ConfirmScreen(f"Quit? The engine stops with the app: {live} live call(s) will be hung up."), self._quit_answered)
            return
        await self._quit()

    async def _quit_answered(self, yes: bool | None) -> None:
        if yes:
            await self._quit()

    async def _quit(self) -> None:
        await self.shutdown()  # hang every call up before the app goes (attached: detach)
        self.exit(self.exit_code)

    @work(exclusive=True, group="fatal")
    async def watch_fatal(self) -> None:
        """The engine cannot go on: hang up, say why, exit non-zero."""
        assert self.engine is not None
        await self.engine.fatal.wait()
        why = self.engine.fatal_error
        self.exit_code = 1
        await self.shutdown()
        self.exit(1, message=f"aiagent-tui: the engine stopped: {why}")

    @work(exclusive=True, group="events")
    async def follow_events(self) -> None:
        assert self.engine is not None
        sub = self.engine.store.subscribe(2000)
        try:
            async for ev in sub:
                if isinstance(ev, CallLog):
                    self.write_log(ev.call_id, ev.message, ev.level)
                else:
                    self.live.follow(ev)
        finally:
            sub.close()

    # ---- rendering
    def write_log(self, call_id: str | None, message: str, level: int = logging.INFO) -> None:
        style = "red" if level >= logging.ERROR else "yellow" if level >= logging.WARNING else ""
        line = Text(time.strftime("%H:%M:%S "), style="dim")
        if call_id:
            line.append(f"[{call_id[-8:]}] ", style="cyan")
        line.append(message, style=style)
        self.log_lines.append(line)
        try:
            self.live.write_log(line)
        except NoMatches:  # closing: the line is kept for nobody, but logging must not fail
            return
        if isinstance(self.screen, LogScreen):
            self.screen.add(line)

    def refresh_panes(self) -> None:
        """The 10 Hz tick."""
        if self.engine is not None:
            self.live.refresh_panes(self.engine)


_HOSTS_CALLS: type[CallsHost] = AiAgentApp  # mypy checks here that the app gives CallsScreen what it casts to
