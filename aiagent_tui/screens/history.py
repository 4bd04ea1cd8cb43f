"""H: the calls the history keeps, newest first, and a filter; enter opens one (call_detail.py).

Each call's outcome is coloured by what the caller got, and its flag is its diagnosis at its worst
(engine/verdicts.py: the same thresholds the live view colours by and ``calls diagnose`` names);
the highlighted call's diagnosis is under the list. The list is read again every REFRESH_S while it
is on screen (a call that ends shows its outcome, new calls come in at the top), keeping the filter
and the highlighted call. The database is read on a worker thread (never on the app's loop); what
is shown is what ``aiagent-tui calls list`` and ``calls show`` print, from the same code.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from aiagent_tui.history_cli import Verdict, parse_filters, verdicts
from aiagent_tui.screens.call_detail import CallDetailScreen, Diagnose, default_norms
from engine.api import CallRow, HistoryDb, HistoryFilter
from engine.history import db_error
from engine.verdicts import MARK, STYLE, outcome_style
from providers.redact import shown_url

LIMIT = 500
REFRESH_S = 2.0  # a live call's row is written every SYNC_INTERVAL_S: an ended call shows so within this and that
# The flag and the outcome first: what an operator scans for, in view on 80 columns too.
COLUMNS = (("flag", 6), ("started", 19), ("length", 7), ("outcome", 16), ("caller", 16), ("dialled", 8), ("profile", 10), ("turns", 5), ("via", 11))


class HistoryScreen(Screen[None]):
    """The call history; ``/`` filters, enter opens a call, escape goes back to the live calls."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("slash", "focus_filter", "filter"),
        Binding("r", "reload", "reload"),
    ]
    DEFAULT_CSS = """
    HistoryScreen #history-verdict { height: 1; padding: 0 1; }
    """

    def __init__(self, url: str, diagnose_call: Diagnose = default_norms) -> None:
        super().__init__()
        self.url = url
        self.diagnose_call = diagnose_call
        self.filters = HistoryFilter()
        self.rows: list[CallRow] = []
        self.verdicts: dict[str, Verdict] = {}  # call id -> its diagnosis (an ended call's kept across refreshes)
        self._asked = 0  # loads asked for: a slower earlier one's rows (another filter) are not shown over a later one's
        self._reading = 0  # reads under way: a refresh waits for them (a hung database gets one thread, not one per refresh)

    def compose(self) -> ComposeResult:
        yield Static("call history", id="history-head")
        yield Input(placeholder="filter: words said, caller:0142 outcome:failed profile:dental since:2h until:02:30  (enter applies)", id="history-filter")
        table: DataTable[str | Text] = DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="history-verdict")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col, width in COLUMNS:
            table.add_column(col, key=col, width=width)
        table.focus()
        self.load()
        self.set_interval(REFRESH_S, self._refresh)

    def _refresh(self) -> None:
        if self.is_current and not self._reading:  # not under a call opened from it
            self.load()

    def load(self) -> None:
        self._asked += 1
        self._reading += 1
        self._read(self._asked, self.filters, self.verdicts)

    @work(thread=True, group="history")
    def _read(self, asked: int, filters: HistoryFilter, known: dict[str, Verdict]) -> None:
        db = HistoryDb(self.url)
        try:
            if (path := db.sqlite_path) is not None and not path.exists():  # never made here: it would hide a deleted one from the engine
                raise FileNotFoundError(f"{path} does not exist")
            db.create()
            rows = db.list(filters, LIMIT)
            found = verdicts(db, rows, self.diagnose_call, known)
        except Exception as e:
            self.app.call_from_thread(self._failed, asked, e)
            return
        finally:
            db.close()
        self.app.call_from_thread(self._show, asked, rows, found)

    def _failed(self, asked: int, e: Exception) -> None:
        self._reading -= 1
        if asked == self._asked and self.is_attached:
            self.query_one("#history-head", Static).update(Text(f"call history: cannot read {shown_url(self.url)}: {db_error(e)}", style="bold red"))

    def _cells(self, r: CallRow) -> tuple[str | Text, ...]:
        length = f"{r.ended_at - r.started_at:.0f} s" if r.ended_at is not None else "live"
        v = self.verdicts.get(r.call_id)
        level = v.diagnosis.level if v is not None else None
        flag = Text(f"{MARK[level]} {level}", style=STYLE[level]) if level not in (None, "ok") else Text("")
        return (flag, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at)), length,
                Text(r.outcome.replace("_", " "), style=outcome_style(r.outcome)), r.caller_number or "unknown", r.dialled, r.profile, str(r.turns),
                v.transport if v is not None else "")

    def _show(self, asked: int, rows: list[CallRow], found: dict[str, Verdict]) -> None:
        self._reading -= 1
        if asked != self._asked or not self.is_attached:  # a later load is on its way, or the screen was closed meanwhile
            return
        self.rows, self.verdicts = rows, found
        table = self.query_one(DataTable)
        keys = [r.call_id for r in rows]
        if [k.value for k in table.rows] == keys:  # the same calls: only what changed, the cursor and scroll stay
            for r in rows:
                for (col, _), new in zip(COLUMNS, self._cells(r), strict=True):
                    if _shown(table.get_cell(r.call_id, col)) != _shown(new):
                        table.update_cell(r.call_id, col, new)
        else:  # calls came or went: the highlighted one stays highlighted
            was = self.highlighted
            table.clear()
            for r in rows:
                table.add_row(*self._cells(r), key=r.call_id)
            if was in keys:
                table.move_cursor(row=keys.index(was), animate=False)
        self._say_verdict()
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

    @property
    def highlighted(self) -> str | None:
        """The call id of the highlighted row."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def _say_verdict(self) -> None:
        v = self.verdicts.get(self.highlighted or "")
        line = Text(no_wrap=True, overflow="ellipsis")
        if v is not None:
            line.append("diagnosis: ", style="bold")
            line.append(v.diagnosis.headline, style=STYLE[v.diagnosis.level])
        self.query_one("#history-verdict", Static).update(line)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._say_verdict()

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


def _shown(cell: object) -> tuple[str, str]:
    """What a cell looks like: its text and its colour."""
    return (cell.plain, str(cell.style)) if isinstance(cell, Text) else (str(cell), "")
