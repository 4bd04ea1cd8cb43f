"""H: the calls the history keeps, newest first, and a filter; enter opens one (call_detail.py).

The database is read on a worker thread (never on the app's loop); what is shown is what
``aiagent-tui calls list`` and ``calls show`` print, from the same code.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from aiagent_tui.history_cli import parse_filters
from aiagent_tui.screens.call_detail import CallDetailScreen, Diagnose, default_norms
from engine.api import CallRow, HistoryDb, HistoryFilter
from engine.history import db_error
from providers.redact import shown_url

LIMIT = 500
_OUTCOME_STYLE = {"failed": "bold red", "interrupted": "red", "live": "green", "transferred": "cyan", "agent_hung_up": "", "caller_hung_up": "", "refused": "yellow"}


class HistoryScreen(Screen[None]):
    """The call history; ``/`` filters, enter opens a call, escape goes back to the live calls."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("slash", "focus_filter", "filter"),
        Binding("r", "reload", "reload"),
    ]

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
