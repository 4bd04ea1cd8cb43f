"""The live calls' list: its filter line (/), its order (s), the selected call, and the calls that
ended a moment ago. It draws the summaries handed to it; it does not reach into the engine."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Input

from engine.sessions import CallSnapshot, CallSummary
from aiagent_tui.widgets import transport_short
from engine.verdicts import STYLE, WAITING_S

SORTS = ("arrival", "time", "state", "caller")  # s cycles; arrival: as they came in
ENDED_ROW_S = 5.0  # an ended call stays in the list (and selected) this long, shown as ended
# The columns: wide enough for +4915112345678 and "agent speaking"; the provider only where the
# app asks for it (the gating pane and the header name it otherwise); the media transport ("via":
# rtp, asock, ws) only while the engine serves calls on more than one, or a call is on another.
COLUMNS = (("caller", 16), ("state", 14), ("time", 5), ("via", 5), ("provider", 8))


def _matches(r: CallSummary, needle: str) -> bool:
    hay = f"{r.caller_number} {r.state} {r.state.replace('_', ' ')} {r.provider or ''} {r.profile} {r.channel} {r.call_id} {r.transport} {transport_short(r.transport)}".lower()
    return all(word in hay for word in needle.lower().split())


def _sort_key(r: CallSummary, by: str) -> tuple:
    if by == "time":
        return (-r.duration_s,)  # the longest first
    if by == "state":  # the ones waiting for an answer first, the longest wait on top
        return (r.state != "processing", r.state, -r.in_state_s)
    return (r.caller_number,)


def _state_cell(r: CallSummary) -> str | Text:
    """A call's state; a turn waiting for the models says for how long (the caller hears nothing
    meanwhile), coloured by engine/verdicts.py's WAITING_S."""
    state = r.state.replace("_", " ")
    level = WAITING_S.level(r.in_state_s)
    if r.state != "processing" or level == "ok":
        return state
    return Text(f"waiting {r.in_state_s:.0f}s", style=STYLE[level])


class CallList(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.selected: str | None = None
        self.filter = ""  # /: calls whose caller, state, provider, profile or channel contain it
        self.sort = "arrival"
        self.ended: dict[str, tuple[CallSnapshot, float]] = {}  # call id -> (its last snapshot, when its row goes)
        self._summaries: list[CallSummary] | None = None  # as last handed over: / and s redraw from them
        self._shown: dict[str, tuple[str | Text, ...]] = {}  # the rows as last drawn
        self._columns: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: caller, state, provider, profile, channel (enter keeps it, escape clears)", id="call-filter")
        table: DataTable = DataTable(id="calls", cursor_type="row", zebra_stripes=True)
        table.border_title = "calls"
        yield table

    @property
    def table(self) -> DataTable:
        return self.query_one("#calls", DataTable)

    def call_ended(self, snapshot: CallSnapshot) -> None:
        self.ended[snapshot.call_id] = (snapshot, time.monotonic() + ENDED_ROW_S)

    def ended_snapshot(self, call_id: str | None) -> CallSnapshot | None:
        """The selected call as it ended, while its row lingers."""
        return self.ended[call_id][0] if call_id in self.ended else None

    def set_columns(self, provider: bool, via: bool = False) -> None:
        columns = tuple(name for name, _ in COLUMNS if (name != "provider" or provider) and (name != "via" or via))
        if columns == self._columns:
            return
        table = self.table
        table.clear(columns=True)
        for name, width in COLUMNS:
            if name in columns:
                table.add_column(name, key=name, width=width)
        self._columns = columns
        self._shown.clear()
        if self._summaries is not None:
            self.show(self._summaries)

    def show(self, summaries: list[CallSummary]) -> None:
        """The list, twice a second: redrawing 50 rows is the costliest thing on screen."""
        self._summaries = summaries
        table = self.table
        rows = {r.call_id: r for r in summaries}
        # An ended call lingers a few seconds, marked, so that the list does not shift under the
        # operator (the next key would act on the call that moved under the cursor).
        now = time.monotonic()
        self.ended = {cid: (snap, until) for cid, (snap, until) in self.ended.items() if until > now}
        for cid, (snap, _) in self.ended.items():
            if cid not in rows:
                rows[cid] = CallSummary(
                    call_id=cid, caller_number=snap.caller_number, state="ended", duration_s=snap.duration_s, provider=snap.provider,
                    channel=snap.channel, profile=snap.profile, transport=snap.transport,
                )
        if self.filter:
            rows = {cid: r for cid, r in rows.items() if _matches(r, self.filter)}
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
            if cid in self._shown:
                self._update(r)
            else:
                self._shown[cid] = row = self._cells(r)
                table.add_row(*row, key=cid)
        keys = [k.value for k in table.rows]
        if redrawn and self.selected in keys:  # the selection stays on its call
            table.move_cursor(row=keys.index(self.selected))
        if table.row_count and (self.selected not in rows):
            self.selected = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value if table.cursor_row < table.row_count else None

    def show_row(self, r: CallSummary | None) -> None:
        """One call's row (the selected call's, between the whole list's redraws), as shown."""
        if r is not None and r.call_id in self._shown:
            self._update(r)

    def _cells(self, r: CallSummary) -> tuple[str | Text, ...]:
        cells = {"caller": r.caller_number or "unknown", "state": _state_cell(r), "time": f"{int(r.duration_s) // 60}:{int(r.duration_s) % 60:02d}",
                 "via": transport_short(r.transport), "provider": r.provider or "—"}
        return tuple(cells[c] for c in self._columns)

    def _update(self, r: CallSummary) -> None:
        row, shown = self._cells(r), self._shown[r.call_id]
        # Touch only what changed: with many calls this is most of the cost.
        for col, old, new in zip(self._columns, shown, row, strict=True):
            if old != new:
                self.table.update_cell(r.call_id, col, new)
        self._shown[r.call_id] = row

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None:
            self.selected = event.row_key.value

    # ---- finding one's way among many calls
    def open_filter(self) -> None:
        box = self.query_one("#call-filter", Input)
        box.add_class("-shown")
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter = event.value.strip()
        self._redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.remove_class("-shown")
        self.table.focus()

    def close_filter(self) -> bool:
        """Escape: clears the filter and hides its line, if it is open."""
        box = self.query_one("#call-filter", Input)
        if not (box.has_focus or box.has_class("-shown")):
            return False
        box.value = ""
        box.remove_class("-shown")
        self.table.focus()
        return True

    def next_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self._redraw()

    def _redraw(self) -> None:
        parts = ["calls"]
        if self.sort != "arrival":
            parts.append(f"by {self.sort}")
        if self.filter:
            parts.append(f"matching {self.filter!r}")
        self.table.border_title = " · ".join(parts)
        if self._summaries is not None:
            self.show(self._summaries)
