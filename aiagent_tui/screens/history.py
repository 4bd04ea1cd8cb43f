"""The History screen: the calls the history keeps, newest first, a filter, and one call in full.

The database is read on a worker thread (never on the app's loop); what is shown is what
``aiagent-tui calls list`` and ``calls show`` print, from the same code.
"""

from __future__ import annotations

import io
import time
from typing import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static

from aiagent_tui.history_cli import parse_filters, show
from aiagent_tui.monitor import MonitorUnavailable, OpenOutput, Replay
from engine.api import CallRecord, CallRow, HistoryDb, HistoryFilter
from providers.redact import shown_url
from engine.diagnosis import Diagnosis, diagnose
from engine.history import db_error
from providers.profile import Norms

Diagnose = Callable[[CallRecord], Diagnosis]


def default_norms(rec: CallRecord) -> Diagnosis:
    return diagnose(rec, Norms())

LIMIT = 500
_OUTCOME_STYLE = {"failed": "bold red", "interrupted": "red", "live": "green", "transferred": "cyan", "agent_hung_up": "", "caller_hung_up": "", "refused": "yellow"}


class HistoryScreen(Screen[None]):
    """The call history; ``/`` filters, enter opens a call, escape goes back to the live calls."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("slash", "focus_filter", "filter"),
        Binding("r", "reload", "reload"),
    ]
    CSS = """
    #history-head { height: 1; padding: 0 1; background: $boost; }
    #history-filter { height: 3; }
    #history-table { height: 1fr; }
    """

    def __init__(self, url: str, diagnose_call: Diagnose = default_norms) -> None:
        super().__init__()
        self.url = url
        self.diagnose_call = diagnose_call
        self.filters = HistoryFilter()
        self.rows: list[CallRow] = []

    def compose(self) -> ComposeResult:
        yield Static("call history", id="history-head")
        yield Input(placeholder="filter: words said, caller:0142 outcome:failed profile:dental since:2h until:02:30  (enter applies)", id="history-filter")
        table: DataTable[str | Text] = DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col, width in (("started", 19), ("length", 7), ("caller", 16), ("dialled", 8), ("profile", 10), ("outcome", 16), ("turns", 5)):
            table.add_column(col, key=col, width=width)
        table.focus()
        self.load()

    @work(thread=True, exclusive=True, group="history")
    def load(self) -> None:
        db = HistoryDb(self.url)
        try:
            if (path := db.sqlite_path) is not None and not path.exists():  # never made here: it would hide a deleted one from the engine
                raise FileNotFoundError(f"{path} does not exist")
            db.create()
            rows = db.list(self.filters, LIMIT)
        except Exception as e:
            self.app.call_from_thread(self._failed, e)
            return
        finally:
            db.close()
        self.app.call_from_thread(self._show, rows)

    def _failed(self, e: Exception) -> None:
        self.query_one("#history-head", Static).update(Text(f"call history: cannot read {shown_url(self.url)}: {db_error(e)}", style="bold red"))

    def _show(self, rows: list[CallRow]) -> None:
        self.rows = rows
        table = self.query_one(DataTable)
        table.clear()
        for r in rows:
            length = f"{r.ended_at - r.started_at:.0f} s" if r.ended_at is not None else "live"
            outcome = Text(r.outcome.replace("_", " "), style=_OUTCOME_STYLE.get(r.outcome, ""))
            table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at)), length, r.caller_number or "unknown",
                          r.dialled, r.profile, outcome, str(r.turns), key=r.call_id)
        what = self.filters.describe()
        more = f" (the newest {LIMIT})" if len(rows) == LIMIT else ""
        self.query_one("#history-head", Static).update(
            Text.assemble(("call history", "bold"), f": {len(rows)} call(s){more}", f", {what}" if what else "", ("  ·  enter opens a call, / filters, escape goes back", "dim"))
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.filters = parse_filters(event.value)
        except ValueError as e:
            self.notify(str(e), severity="error", timeout=8)
            return
        self.query_one(DataTable).focus()
        self.load()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(CallDetailScreen(self.url, event.row_key.value, self.diagnose_call))

    def action_focus_filter(self) -> None:
        self.query_one(Input).focus()

    def action_reload(self) -> None:
        self.load()

    def action_back(self) -> None:
        if self.query_one(Input).has_focus:
            self.query_one(DataTable).focus()
        else:
            self.app.pop_screen()


class CallDetailScreen(Screen[None]):
    """One call from the history: what ``aiagent-tui calls diagnose`` and ``calls show`` print; ``p``
    plays its recording on this machine's sound device with the transcript following."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("p", "replay", "play recording"),
        Binding("space", "pause", "pause"),
    ]
    CSS = """
    #detail-box { height: 1fr; border: round $primary; padding: 0 1; }
    """

    def __init__(self, url: str, call_id: str, diagnose_call: Diagnose = default_norms, open_output: OpenOutput | None = None) -> None:
        super().__init__()
        self.url = url
        self.call_id = call_id
        self.diagnose_call = diagnose_call
        self.open_output = open_output  # None: the default sound device
        self.record: CallRecord | None = None
        self.replay: Replay | None = None
        self.current_line: int | None = None  # the transcript line the replay is at
        self._head = Text()
        self._body: list[str] = []
        self._follow_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        box = VerticalScroll(Static("reading…", id="detail"), id="detail-box")
        box.border_title = f"call {self.call_id}"
        yield box
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail-box").focus()
        self.load()

    @work(thread=True, exclusive=True, group="detail")
    def load(self) -> None:
        db = HistoryDb(self.url)
        try:
            rec = db.get(self.call_id)
        except Exception as e:
            self.app.call_from_thread(self._say, Text(f"cannot read {shown_url(self.url)}: {db_error(e)}", style="bold red"))
            return
        finally:
            db.close()
        if rec is None:
            self.app.call_from_thread(self._say, Text(f"call {self.call_id} is no longer in the history (retention)", style="yellow"))
            return
        out = io.StringIO()
        show(rec, out)
        head = diagnosis_text(self.diagnose_call(rec))
        self.app.call_from_thread(self._loaded, rec, head, out.getvalue().splitlines())

    def _say(self, text: Text) -> None:
        self.query_one("#detail", Static).update(text)

    def _loaded(self, rec: CallRecord, head: Text, body: list[str]) -> None:
        self.record, self._head, self._body = rec, head, body
        self._redraw()

    def _redraw(self) -> None:
        text = Text()
        r = self.replay
        if r is not None:
            state = "paused" if r.paused else "playing"
            text.append(f"▶ recording {state} {_mmss(r.position_s)} / {_mmss(r.duration_s)} on {r.device}", style="bold cyan")
            text.append("  (space pauses, p stops)\n\n", style="dim")
        text.append_text(self._head)
        text.append("\n")
        first = self._body.index("transcript") + 1 if "transcript" in self._body else len(self._body)
        for i, line in enumerate(self._body):
            if self.current_line is not None and i == first + self.current_line:
                text.append(line + "\n", style="reverse bold")
            else:
                text.append(line + "\n")
        self.query_one("#detail", Static).update(text)

    def action_replay(self) -> None:
        rec = self.record
        if self.replay is not None:
            self._stop_replay("stopped")
            return
        if rec is None:
            return
        if not rec.recording:
            self.notify("this call was not recorded (its profile has record = false)", severity="warning")
            return
        self._open_replay(rec.recording)

    @work(thread=True, exclusive=True, group="replay")
    def _open_replay(self, path: str) -> None:
        try:
            replay = Replay(path, self.open_output) if self.open_output else Replay(path)
        except MonitorUnavailable as e:
            self.app.call_from_thread(self.notify, f"cannot play the recording: {e}", severity="error", timeout=10)
            return
        self.app.call_from_thread(self._started, replay)

    def _started(self, replay: Replay) -> None:
        self.replay = replay
        self._follow_timer = self.set_interval(0.2, self._follow)
        self._follow()

    def _follow(self) -> None:
        r, rec = self.replay, self.record
        if r is None or rec is None:
            return
        if r.done:
            self._stop_replay("played to the end")
            return
        now = (rec.recording_started_at or rec.started_at) + r.position_s
        said = [i for i, line in enumerate(rec.transcript) if line.at <= now]
        self.current_line = said[-1] if said else None
        self._redraw()
        if self.current_line is not None:
            # Keep the line in view (lines are counted unwrapped: close enough to scroll by).
            y = len(self._head.plain.splitlines()) + 3 + self._body.index("transcript") + self.current_line
            self.query_one("#detail-box", VerticalScroll).scroll_to(y=max(0, y - 4), animate=False)

    def _stop_replay(self, why: str) -> None:
        if self._follow_timer is not None:
            self._follow_timer.stop()
            self._follow_timer = None
        if self.replay is not None:
            self.replay.close()
            self.replay = None
            self.notify(f"replay {why}", timeout=4)
        self.current_line = None
        self._redraw()

    def action_pause(self) -> None:
        if self.replay is not None:
            self.replay.paused = not self.replay.paused
            self._redraw()

    def action_back(self) -> None:
        if self.replay is not None:
            self._stop_replay("stopped")
        self.app.pop_screen()


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def diagnosis_text(d: Diagnosis) -> Text:
    text = Text()
    text.append("diagnosis: ", style="bold")
    text.append(d.headline + "\n", style="bold red" if d.problems else "green")
    for f in d.findings:
        text.append(f"  {f.severity:7s} ", style="red" if f.severity == "problem" else "yellow")
        text.append(f.says + "\n")
        for e in f.evidence:
            text.append(f"           - {e}\n", style="dim")
    return text
