"""L: every log line the app has kept, full screen, with a filter; escape goes back."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input, RichLog

LOG_KEPT = 5000  # log lines the app keeps for L (the live calls' pane shows the last 500)


class LogScreen(Screen[None]):
    BINDINGS = [Binding("escape", "back", "back"), Binding("slash", "focus_filter", "filter"), Binding("w", "warnings", "warnings only")]

    def __init__(self, lines: deque[Text]) -> None:
        super().__init__()
        self.lines = lines
        self.needle = ""
        self.warnings_only = False

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter the log: words (enter applies); w: warnings and errors only", id="log-filter")
        yield RichLog(id="fulllog", wrap=True, markup=False, max_lines=LOG_KEPT)
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
