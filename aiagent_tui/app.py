"""The terminal app: the engine runs inside Textual's event loop; the app renders its snapshots at
10 Hz, follows its events for the log and live transcripts, and steers it with its commands."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO, cast

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.driver import Driver
from textual.drivers.linux_driver import LinuxDriver
from textual.screen import ModalScreen, Screen
from textual.notifications import SeverityLevel
from textual.widgets import DataTable, Footer, Input, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from aiagent_tui.history_screen import Diagnose, HistoryScreen, default_norms
from aiagent_tui.paths import state_dir
from aiagent_tui.monitor import AudioMonitor, MonitorUnavailable
from aiagent_tui.widgets import GatingPane, HeaderBar, LevelSparkline, RtpPane, TimelinePane, TranscriptPane, VadPane
from engine.api import EngineRuntime, EngineView
from engine.sessions import CallEnded, CallLog, CallSnapshot, CallStarted, CallSummary, TranscriptAdded
from providers.base import Readiness

LOG_KEPT = 5000  # log lines the app keeps for L (the pane shows the last 500)

log = logging.getLogger(__name__)

HELP = """\
[b]aiagent-tui[/b] — live calls of the AI voice agent

  [b]↑ ↓[/b]   select a call          [b]/[/b]  filter the calls (caller, state, provider, profile, channel)
  [b]s[/b]     sort: as they came, longest, waiting first, by caller     [b]space[/b]  pause the screen
  [b]c[/b]     copy the call's id (the clipboard, over SSH too; the notice shows it and its channel)
  [b]p[/b]     choose the provider: for new calls, and for the selected call from its next turn
  [b]b[/b]     barge-in: stop the agent on the selected call now
  [b]m[/b]     monitor: listen to the selected call (caller and agent) on this machine's speaker
  [b]t[/b]     transfer the selected call to one of its profile's departments (announced first)
  [b]h[/b]     hang up the selected call (asks first; an ended call stays listed a few seconds)
  [b]d[/b]     dump the selected call (transcript, RTP stats, turn timeline) to a JSON file
  [b]H[/b]     call history: past calls, filtered (/), each diagnosed and in full (enter), replayed (p)
  [b]L[/b]     the whole log (5000 lines), filtered (/), warnings only (w)
  [b]R[/b]     reload config.toml: new calls get its profiles, prompts, timings; calls up keep theirs
  [b]?[/b]     this help          [b]q[/b]  quit (asks first if that hangs calls up; attached: detach)

[b]The numbers[/b] (yellow: worse than a good line; red: a caller hears it)
  [b]loss[/b]      caller packets that never arrived, of those expected (yellow 1 %, red 5 %)
  [b]jitter[/b]    how unevenly they arrive (RFC 3550; yellow 30 ms, red 60 ms)
  [b]reord/dup[/b] packets out of order / twice     [b]last pkt[/b]  since the last one (silence may send none)
  [b]out[/b]       packets to the caller; [b]dry[/b]: the agent's audio ran out mid-sentence (a gap heard)
  [b]pacing[/b]    how late a 20 ms frame went out (yellow 10 ms, red 40 ms: the engine is overloaded)
  [b]dB[/b]        the caller's level (dBFS: 0 is full scale; speech is about -30, silence under -50)
  [b]GATED[/b]     the caller is not listened to while the agent speaks (except for barge-in); [b]open[/b]: heard
  [b]waiting Ns[/b]  a turn has waited that long for the models (the caller hears nothing)
  [b]timeline[/b]  per turn: the caller's last voiced frame → eos (the wait until the engine decides
            they have finished) → STT → LLM's first sentence → TTS → first audio out;
            [b]N ms waiting for models[/b]: of it, behind other calls' model work
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        yield Static(Text.from_markup(HELP), id="help")


class ProviderScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, current: str, readiness: dict[str, Readiness]) -> None:
        super().__init__()
        self.current = current
        self.readiness = readiness

    def compose(self) -> ComposeResult:
        names = sorted(self.readiness)
        opts = []
        for name in names:
            r = self.readiness[name]
            note = "" if r.ready or r.detail == "not loaded" else f"  ({r.detail})"
            opts.append(Option(f"{'● ' if name == self.current else '  '}{name}{note}", id=name))
        options = OptionList(*opts)
        if self.current in names:
            options.highlighted = names.index(self.current)
        yield Vertical(Static("Provider for new calls and the selected call:"), options, id="provider-box")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question before what cannot be undone: ending calls."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Vertical(Static(self.question), Static(Text.from_markup("[b]y[/b] yes    [b]n[/b] or [b]escape[/b] no")), id="confirm-box")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TransferScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, departments: dict[str, str]) -> None:
        super().__init__()
        self.departments = departments

    def compose(self) -> ComposeResult:
        options = OptionList(*(Option(f"{name}  →  {target}", id=name) for name, target in self.departments.items()))
        yield Vertical(Static("Transfer the call to:"), options, id="provider-box")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


def _matches(r: CallSummary, needle: str) -> bool:
    hay = f"{r.caller_number} {r.state} {r.state.replace('_', ' ')} {r.provider or ''} {r.profile} {r.channel} {r.call_id}".lower()
    return all(word in hay for word in needle.lower().split())


def _sort_key(r: CallSummary, by: str) -> tuple:
    if by == "time":
        return (-r.duration_s,)  # the longest first
    if by == "state":  # the ones waiting for an answer first, the longest wait on top
        return (r.state != "processing", r.state, -r.in_state_s)
    return (r.caller_number,)


class LogScreen(Screen[None]):
    """Every log line the app has kept (LOG_KEPT), full screen, with a filter; escape goes back."""

    BINDINGS = [Binding("escape", "back", "back"), Binding("slash", "focus_filter", "filter"), Binding("w", "warnings", "warnings only")]
    CSS = """
    #fulllog { height: 1fr; border: round $primary; }
    #log-filter { height: 3; }
    """

    def __init__(self, lines: deque[Text]) -> None:
        super().__init__()
        self.lines = lines
        self.needle = ""
        self.warnings_only = False

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter the log: words (enter applies); w: warnings and errors only", id="log-filter")
        log = RichLog(id="fulllog", wrap=True, markup=False, max_lines=LOG_KEPT)
        yield log
        yield Footer()

    def on_mount(self) -> None:
        self._fill()
        self.query_one("#fulllog").focus()

    def _shows(self, line: Text) -> bool:
        if self.warnings_only and not any(str(span.style) in ("red", "yellow") for span in line.spans):
            return False
        return self.needle.lower() in line.plain.lower()

    def _fill(self) -> None:
        log = self.query_one("#fulllog", RichLog)
        log.clear()
        shown = [line for line in self.lines if self._shows(line)]
        for line in shown:
            log.write(line)
        what = ("warnings and errors" if self.warnings_only else "all") + (f" containing {self.needle!r}" if self.needle else "")
        log.border_title = f"log: {len(shown)} of {len(self.lines)} lines, {what}  ·  / filters, w warnings, escape back"

    def add(self, line: Text) -> None:
        if self._shows(line):
            self.query_one("#fulllog", RichLog).write(line)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.needle = event.value.strip()
        self._fill()
        self.query_one("#fulllog").focus()

    def action_focus_filter(self) -> None:
        self.query_one(Input).focus()

    def action_warnings(self) -> None:
        self.warnings_only = not self.warnings_only
        self._fill()

    def action_back(self) -> None:
        if self.query_one(Input).has_focus:
            self.query_one("#fulllog").focus()
        else:
            self.app.pop_screen()


def _state_cell(r: CallSummary) -> str | Text:
    """A call's state in the list; a turn waiting for the models says for how long (the caller
    hears nothing meanwhile), yellow from 2 s, red from 5 s."""
    state = r.state.replace("_", " ")
    if r.state != "processing" or r.in_state_s < 2.0:
        return state
    return Text(f"waiting {r.in_state_s:.0f}s", style="bold red" if r.in_state_s >= 5.0 else "yellow")


class _PaneHandler(logging.Handler):
    """Log records of WARNING and up, from any of the engine's modules, into the log pane: what
    an operator must see does not stay in the log file. The store's own lines come as events."""

    def __init__(self, app: AiAgentApp) -> None:
        super().__init__(logging.WARNING)
        self.app = app
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "engine.sessions":  # SessionStore.log: shown from its CallLog event
            return
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({record.exc_info[1].__class__.__name__}: {record.exc_info[1]}; the log file has the traceback)"
            if threading.get_ident() == self._thread:
                self.app.write_log(None, message, record.levelno)
            else:
                self.app.call_from_thread(self.app.write_log, None, message, record.levelno)
        except Exception:  # the app is closing: the log file still has it
            pass


class _TerminalOut:
    """The terminal as Textual's writer thread writes to it, without the error once the terminal
    is gone (the operator's SSH session dropped: EIO). That error would end the writer thread, and
    the app's 31st write after it would block the event loop on the thread's full queue before the
    engine could hang the calls up."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._file.write(text)
            except OSError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._file.flush()
            except OSError:
                self.gone = True

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return True


class TerminalDriver(LinuxDriver):
    """Textual's Linux driver, writing through ``_TerminalOut``."""

    def __init__(self, app: App[Any], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        assert self._file is not None, "no stderr to draw on"
        self._file = cast(Any, _TerminalOut(self._file))  # as Textual's WriterThread uses a file


class AiAgentApp(App[int]):
    TITLE = "aiagent-tui"
    CSS = """
    Screen { layout: vertical; }
    #header { height: 2; background: $boost; padding: 0 1; }
    #body { height: 1fr; }
    #callsbox { width: 46; height: 100%; }
    #calls { height: 1fr; border: round $primary; }
    #call-filter { display: none; height: 3; }
    #call-filter.-shown { display: block; }
    /* Normal width: RTP and gating above the transcript and the turn timeline; from 150 columns
       the VAD pane too and the provider column. */
    #panes { grid-size: 2 2; grid-columns: 1fr 1fr; grid-rows: 12 1fr; }
    #vadbox { display: none; }
    .-wide #callsbox { width: 56; }
    .-wide #panes { grid-size: 3 2; grid-columns: 1fr 1fr 1fr; }
    .-wide #vadbox { display: block; }
    .-wide #transcript { column-span: 2; }
    /* Narrow or short terminals (80x24 over SSH): the calls above, the transcript and the turn
       timeline below; the RTP, VAD and gating panes fold away (the call's dump has them). */
    .-narrow #body { layout: vertical; }
    .-narrow #callsbox { width: 100%; height: auto; }
    .-narrow #calls { height: 7; }
    .-narrow #rtp, .-narrow #vadbox, .-narrow #gating { display: none; }
    .-narrow #panes { grid-size: 2 1; grid-columns: 1fr 30; grid-rows: 1fr; }
    .-narrow #transcript { column-span: 1; }
    .-narrow #log { height: 5; }
    .pane { border: round $secondary; padding: 0 1; height: 100%; }
    #vadbox { border: round $secondary; padding: 0 1; height: 100%; }
    #vad { height: 2; }
    #spark { height: 1fr; }
    #log { height: 9; border: round $secondary; }
    #help { width: 104; height: auto; border: thick $primary; padding: 1 2; background: $surface; }
    HelpScreen, ProviderScreen, ConfirmScreen { align: center middle; }
    #confirm-box { width: 64; height: auto; border: thick $warning; padding: 1 2; background: $surface; }
    #provider-box { width: 60; height: auto; border: thick $primary; padding: 1 2; background: $surface; }
    """
    BINDINGS = [  # help first: at 80 columns the footer shows what fits, from the left
        Binding("question_mark", "help", "help"),
        Binding("p", "provider", "provider"),
        Binding("b", "barge_in", "barge-in"),
        Binding("m", "monitor", "monitor"),
        Binding("t", "transfer", "transfer"),
        Binding("h", "hangup", "hang up"),
        Binding("d", "dump", "dump"),
        Binding("H", "history", "history"),
        Binding("R", "reload", "reload"),
        Binding("slash", "filter_calls", "filter", show=False),
        Binding("s", "sort_calls", "sort", show=False),
        Binding("space", "pause", "pause", show=False),
        Binding("c", "copy_id", "copy id", show=False),
        Binding("L", "full_log", "log", show=False),
        Binding("q", "quit", "quit"),
    ]

    # Keys that act on the live calls: only on the live calls' screen (not under a history or a dialog).
    LIVE_ACTIONS = frozenset({
        "provider", "barge_in", "monitor", "transfer", "hangup", "dump", "history", "reload", "filter_calls", "sort_calls", "pause", "copy_id", "full_log",
    })
    SORTS = ("arrival", "time", "state", "caller")  # s cycles; arrival: as they came in
    ENDED_ROW_S = 5.0  # an ended call stays in the list (and selected) this long, shown as ended
    # The call list's columns: wide enough for +4915112345678 and "agent speaking"; the provider
    # only on a wide terminal (the gating pane and the header name it otherwise).
    COLUMNS = (("caller", 16), ("state", 14), ("time", 5), ("provider", 8))

    def __init__(
        self, runtime: EngineRuntime, dump_dir: Path | None = None, history_url: str | None = None, diagnose_call: Diagnose = default_norms,
    ) -> None:
        super().__init__()
        self.runtime = runtime  # starts the engine (and the simulator with --sim) in this app's loop
        self.dump_dir = (dump_dir or state_dir()).resolve()  # the notice gives the whole path
        self.history_url = history_url  # None: this engine keeps no history
        self.diagnose_call = diagnose_call
        self.engine: EngineView | None = None
        self.selected: str | None = None
        self.partials: dict[str, str] = {}
        self.ended: dict[str, tuple[CallSnapshot, float]] = {}  # call id -> (its last snapshot, when its row goes)
        self._shown: dict[str, tuple[str | Text, ...]] = {}  # the call list's rows as last drawn
        self._ticks = 0
        self.monitor: AudioMonitor | None = None
        self.exit_code = 0
        self._stopping = False  # a signal asked the app to stop
        self._log_handler: logging.Handler = logging.NullHandler()
        self._columns: tuple[str, ...] = ()  # the call list's columns now
        self.call_filter = ""  # /: calls whose caller, state, provider, profile or channel contain it
        self.sort = "arrival"
        self.paused = False  # space: the panes and the list hold still to be read; the engine goes on
        self.log_lines: deque[Text] = deque(maxlen=LOG_KEPT)  # for the full log view (L)

    # ---- layout
    def compose(self) -> ComposeResult:
        yield HeaderBar("starting…", id="header")
        with Horizontal(id="body"):
            with Vertical(id="callsbox"):
                yield Input(placeholder="filter: caller, state, provider, profile, channel (enter keeps it, escape clears)", id="call-filter")
                table: DataTable = DataTable(id="calls", cursor_type="row", zebra_stripes=True)
                table.border_title = "calls"
                yield table
            with Grid(id="panes"):
                yield self._pane(RtpPane(id="rtp"), "RTP / SSRC")
                with Vertical(id="vadbox"):
                    yield VadPane(id="vad")
                    yield LevelSparkline([], id="spark")
                yield self._pane(GatingPane(id="gating"), "gating")
                yield self._pane(TranscriptPane(id="transcript"), "transcript")
                yield self._pane(TimelinePane(id="timeline"), "turn timeline")
        log = RichLog(id="log", wrap=True, markup=False, max_lines=500)
        log.border_title = "log"
        yield log
        yield Footer(show_command_palette=False)  # room for the keys (^p still opens the palette)

    @staticmethod
    def _pane(widget: Static, title: str) -> Static:
        widget.add_class("pane")
        widget.border_title = title
        return widget

    # ---- engine lifecycle (inside the app's own loop)
    async def on_mount(self) -> None:
        self.query_one("#vadbox").border_title = "VAD"
        table = self.query_one(DataTable)
        self._fit_layout()
        table.focus()  # the arrow keys pick a call (the log would take them otherwise)
        self._log_handler = _PaneHandler(self)
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
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        self.engine = None
        await self.runtime.stop()

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
                elif isinstance(ev, TranscriptAdded):
                    if ev.turn.final:
                        self.partials.pop(ev.call_id, None)
                    elif ev.turn.role == "caller":
                        self.partials[ev.call_id] = ev.turn.text
                elif isinstance(ev, CallStarted) and self.selected is None:
                    self.selected = ev.call_id
                elif isinstance(ev, CallEnded):
                    self.partials.pop(ev.call_id, None)
                    self.ended[ev.call_id] = (ev.snapshot, time.monotonic() + self.ENDED_ROW_S)
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
            self.query_one(RichLog).write(line)
        except NoMatches:  # closing: the line is kept for nobody, but logging must not fail
            return
        if isinstance(self.screen, LogScreen):
            self.screen.add(line)

    def refresh_panes(self) -> None:
        eng = self.engine
        if eng is None:
            return
        try:
            header = self.query_one(HeaderBar)
        except NoMatches:  # the app is closing: its widgets go before its timer stops
            return
        header.show(eng.summary(), paused=self.paused)
        if self.paused:
            return
        self._ticks += 1
        table = self.query_one(DataTable)
        if self._ticks % 5 == 1 or self.selected is None:
            self._refresh_list(table)
        # Only the selected call is rendered in full (an ended one as it ended).
        c = eng.store.snapshot(self.selected) if self.selected else None
        if c is None and self.selected in self.ended:
            c = self.ended[self.selected][0]
        self.query_one(RtpPane).show(c)
        self.query_one(VadPane).show(c)
        self.query_one(LevelSparkline).show(c)
        self.query_one(GatingPane).show(c)
        self.query_one(TranscriptPane).show(c, self.partials.get(self.selected or ""))
        self.query_one(TimelinePane).show(c)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_layout()

    def _fit_layout(self) -> None:
        """Narrow (under 100 columns or 30 rows), normal, or wide (150 columns and up): the CSS
        classes pick the panes, and the call list gets the columns that fit."""
        w, h = self.size
        narrow = w < 100 or h < 30
        wide = w >= 150 and not narrow
        self.set_class(narrow, "-narrow")
        self.set_class(wide, "-wide")
        self.query_one(HeaderBar).compact = narrow
        self.query_one(GatingPane).with_level = not wide
        self.query_one(Footer).compact = narrow
        columns = tuple(name for name, _ in self.COLUMNS if name != "provider" or wide or narrow)
        if columns != self._columns:
            table = self.query_one("#calls", DataTable)
            table.clear(columns=True)
            for name, width in self.COLUMNS:
                if name in columns:
                    table.add_column(name, key=name, width=width)
            self._columns = columns
            self._shown.clear()
            if self.engine is not None:
                self._refresh_list(table)

    def _refresh_list(self, table: DataTable) -> None:
        """The call list, twice a second: redrawing 50 rows is the costliest thing on screen."""
        assert self.engine is not None
        rows = {r.call_id: r for r in self.engine.store.summaries()}
        # An ended call lingers a few seconds, marked, so that the list does not shift under the
        # operator (the next key would act on the call that moved under the cursor).
        now = time.monotonic()
        self.ended = {cid: (snap, until) for cid, (snap, until) in self.ended.items() if until > now}
        for cid, (snap, _) in self.ended.items():
            if cid not in rows:
                rows[cid] = CallSummary(cid, snap.caller_number, "ended", snap.duration_s, snap.provider, 0.0, snap.channel, snap.profile)
        if self.call_filter:
            rows = {cid: r for cid, r in rows.items() if _matches(r, self.call_filter)}
        if self.sort != "arrival":
            rows = dict(sorted(rows.items(), key=lambda kv: _sort_key(kv[1], self.sort)))
        for key in [k.value for k in list(table.rows) if k.value is not None]:
            if key not in rows:
                table.remove_row(key)
                self._shown.pop(key, None)
        kept = [k.value for k in table.rows]
        # New rows go at the end: anything else (sorting, a filter let go) redraws the list in order;
        # so does an empty table (new columns).
        redrawn = not kept or kept + [cid for cid in rows if cid not in self._shown] != list(rows)
        if redrawn:
            table.clear()
            self._shown.clear()
        for cid, r in rows.items():
            cells = {"caller": r.caller_number or "unknown", "state": _state_cell(r), "time": f"{int(r.duration_s) // 60}:{int(r.duration_s) % 60:02d}", "provider": r.provider or "—"}
            row = tuple(cells[c] for c in self._columns)
            shown = self._shown.get(cid)
            if shown is None:
                table.add_row(*row, key=cid)
            elif shown != row:  # touch only what changed: with many calls this is most of the cost
                for col, old, new in zip(self._columns, shown, row, strict=True):
                    if old != new:
                        table.update_cell(cid, col, new)
            self._shown[cid] = row
        keys = [k.value for k in table.rows]
        if redrawn and self.selected in keys:  # the selection stays on its call
            table.move_cursor(row=keys.index(self.selected))
        if table.row_count and (self.selected not in rows):
            self.selected = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value if table.cursor_row < table.row_count else None

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None:
            self.selected = event.row_key.value

    # ---- keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.LIVE_ACTIONS and len(self.screen_stack) > 1:
            return False
        return True

    def _need_call(self) -> str | None:
        if self.selected in self.ended:
            who = self.ended[self.selected][0].caller_number or "an unknown number"
            self.notify(f"the call from {who} has ended", severity="warning")
            return None
        if self.engine is None or self.selected is None or self.engine.store.snapshot(self.selected) is None:
            self.notify("no call selected", severity="warning")
            return None
        return self.selected

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # ---- finding one's way among many calls
    def action_filter_calls(self) -> None:
        box = self.query_one("#call-filter", Input)
        box.add_class("-shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "call-filter":
            self.call_filter = event.value.strip()
            self._refresh_calls_title()
            self._refresh_list(self.query_one("#calls", DataTable))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "call-filter":
            if not event.value.strip():
                event.input.remove_class("-shown")
            self.query_one("#calls", DataTable).focus()

    def on_key(self, event: events.Key) -> None:
        box = self.query_one("#call-filter", Input)
        if event.key == "escape" and self.screen is self.screen_stack[0] and (box.has_focus or box.has_class("-shown")):  # clears the filter
            box.value = ""
            box.remove_class("-shown")
            self.query_one("#calls", DataTable).focus()
            event.stop()

    def action_sort_calls(self) -> None:
        self.sort = self.SORTS[(self.SORTS.index(self.sort) + 1) % len(self.SORTS)]
        self._refresh_calls_title()
        self._refresh_list(self.query_one("#calls", DataTable))

    def _refresh_calls_title(self) -> None:
        parts = ["calls"]
        if self.sort != "arrival":
            parts.append(f"by {self.sort}")
        if self.call_filter:
            parts.append(f"matching {self.call_filter!r}")
        self.query_one("#calls", DataTable).border_title = " · ".join(parts)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.query_one(RichLog).auto_scroll = not self.paused
        if self.engine is not None:
            self.query_one(HeaderBar).show(self.engine.summary(), paused=self.paused)

    def action_copy_id(self) -> None:
        snap = self.engine.store.snapshot(self.selected) if self.engine is not None and self.selected else None
        if snap is None and self.selected in self.ended:
            snap = self.ended[self.selected][0]
        if snap is None:
            self.notify("no call selected", severity="warning")
            return
        # OSC 52: the terminal (even over SSH) puts it on the clipboard; the notice shows it too.
        self.copy_to_clipboard(snap.call_id)
        self.notify(f"copied {snap.call_id}" + (f"  (channel {snap.channel})" if snap.channel else ""), timeout=8)

    def action_full_log(self) -> None:
        self.push_screen(LogScreen(self.log_lines))

    def action_history(self) -> None:
        if self.history_url is None:
            self.notify("no call history: history.enabled is false in the config", severity="warning")
            return
        self.push_screen(HistoryScreen(self.history_url, self.diagnose_call))

    def action_barge_in(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        if self.engine.barge_in(cid):
            self.notify(f"barge-in on {cid[-8:]}")
        else:
            self.notify("the agent is not speaking on this call: nothing to stop", severity="warning")

    def action_hangup(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        snap = self.engine.store.snapshot(cid)
        who = snap.caller_number if snap is not None and snap.caller_number else "an unknown number"

        async def answered(yes: bool | None) -> None:
            if yes and self.engine is not None:
                await self.engine.hangup(cid)
                self.notify(f"hung up the call from {who} ({cid[-8:]})")

        self.push_screen(ConfirmScreen(f"Hang up the call from {who}?\n(call {cid})"), answered)

    def action_transfer(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        departments = self.engine.departments(cid)
        if not departments:
            self.notify("this call's profile has no departments to transfer to", severity="warning")
            return

        def chosen(name: str | None) -> None:
            if name and self.engine is not None:
                ok = self.engine.transfer(cid, name)
                self.notify(f"transferring {cid[-8:]} to {name}" if ok else f"transfer refused: {cid[-8:]} is ending or already acting", severity="information" if ok else "error")

        self.push_screen(TransferScreen(departments), chosen)

    @work(exclusive=True, group="reload")
    async def action_reload(self) -> None:
        """Re-reads the config file: new calls get the profiles, prompts, timings and default
        provider it now has; calls in progress keep theirs; a bad file is refused whole."""
        if self.engine is None:
            return
        result = await self.runtime.reload()
        severity: SeverityLevel = "error" if result.refused or result.failed else "warning" if result.warns else "information"
        self.notify(f"config {result.describe()}", title="reload", severity=severity, timeout=12)

    def action_provider(self) -> None:
        if self.engine is None:
            return
        self.push_screen(ProviderScreen(self.engine.default_provider, self.engine.provider_readiness()), self._provider_chosen)

    async def _provider_chosen(self, name: str | None) -> None:
        if not name or self.engine is None:
            return
        try:
            await self.engine.set_default_provider(name)
            cid = self.selected if self.selected and self.engine.store.snapshot(self.selected) else None
            if cid:
                await self.engine.set_call_provider(cid, name)
            self.notify(f"provider {name} for new calls" + (f" and call {cid[-8:]}" if cid else ""))
        except Exception as e:
            self.notify(f"provider {name}: {e}", severity="error", timeout=8)

    def action_monitor(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        if self.monitor is not None:
            self.engine.set_audio_tap(self.monitor.call_id, None)
            self.monitor.close()
            was = self.monitor.call_id
            self.monitor = None
            if was == cid:
                self.notify("monitor off")
                return
        if not self.engine.set_audio_tap(cid, None):
            self.notify("cannot monitor: the call's audio is in the engine's process (attached)", severity="warning", timeout=8)
            return
        try:
            self.monitor = AudioMonitor(cid)
        except MonitorUnavailable as e:
            self.notify(f"cannot monitor: {e}", severity="warning", timeout=8)
            self.write_log(cid, f"monitor unavailable: {e}", logging.WARNING)
            return
        self.engine.set_audio_tap(cid, self.monitor.feed)
        self.notify(f"monitoring {cid[-8:]} on {self.monitor.device}")

    def action_dump(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        snap = self.engine.store.snapshot(cid)
        if snap is None:
            return
        path = self.dump_dir / f"call-{cid}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(dataclasses.asdict(snap), indent=2, default=str))
        self.notify(f"dumped to {path}")
