"""L: every log line the app has kept, full screen, with a filter; escape goes back."""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import Iterable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.geometry import Size
from textual.screen import Screen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Footer, Input

LOG_KEPT = 5000  # log lines the app keeps for L (the live calls' pane shows the last 500)


class LogView(ScrollView, can_focus=True):
    """Log lines folded at the width (as ``less`` does) and drawn only as they scroll into view:
    5000 lines open as fast as 50, and they are on the first frame. (RichLog renders every line
    at its first resize, after the first frame: an empty box for half a second.) Until the
    operator scrolls up it shows the newest lines, also before it knows its own height."""

    DEFAULT_CSS = "LogView { scrollbar-gutter: stable; }"  # the width lines fold at does not change with the scrollbar

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._lines: list[Text] = []  # one a row of text (a message with newlines is several)
        self._strips: list[Strip | None] = []  # each line drawn whole, when first shown
        self._starts: list[int] = []  # the first row of each line, folded at _width
        self._rows = 0
        self._width = 0
        self._follow = True  # at the end: new lines scroll into view

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def set_lines(self, lines: Iterable[Text]) -> None:
        self._lines, self._strips = [], []
        self._add(lines)
        self._follow = True
        self._refold()

    def append(self, line: Text) -> None:
        self._add([line])
        if len(self._lines) > LOG_KEPT:
            del self._lines[: -LOG_KEPT], self._strips[: -LOG_KEPT]
        self._refold()

    def _add(self, lines: Iterable[Text]) -> None:
        for entry in lines:
            for line in entry.split("\n", allow_blank=True) if "\n" in entry.plain else [entry]:
                self._lines.append(line)
                self._strips.append(None)

    def _fold(self, width: int) -> None:
        self._width = max(1, width)
        self._starts, row = [], 0
        for line in self._lines:
            self._starts.append(row)
            row += max(1, -(-line.cell_len // self._width))
        self._rows = row

    def _refold(self) -> None:
        width = self.scrollable_content_region.width
        if not width:  # not laid out yet: on_resize folds them
            self.refresh()
            return
        self._fold(width)
        self.virtual_size = Size(width, self._rows)
        if self._follow:  # once the new size is laid out: the scroll position says the end too
            self.call_after_refresh(self._to_end)
        self.refresh()

    def _to_end(self) -> None:
        if self._follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def on_resize(self, event: events.Resize) -> None:
        self._refold()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.virtual_size.height:  # the operator scrolled: up stops following, the end follows again
            self._follow = round(new_value) >= self.max_scroll_y

    def render_line(self, y: int) -> Strip:
        width, height = self.scrollable_content_region.size
        if width != self._width:
            self._fold(width)
        top = max(0, self._rows - height) if self._follow else self.scroll_offset.y
        row = top + y
        i = bisect_right(self._starts, row) - 1
        style = self.rich_style
        if i < 0 or row >= self._rows:
            return Strip.blank(width, style)
        strip = self._strips[i]
        if strip is None:
            line = self._lines[i]
            strip = self._strips[i] = Strip(list(line.render(self.app.console)), line.cell_len).apply_style(style)
        x = (row - self._starts[i]) * self._width
        return strip.crop_extend(x, x + width, style)


class LogScreen(Screen[None]):
    BINDINGS = [Binding("escape", "back", "back"), Binding("slash", "focus_filter", "filter"), Binding("w", "warnings", "warnings only")]

    def __init__(self, lines: deque[Text]) -> None:
        super().__init__()
        self.lines = lines
        self.needle = ""
        self.warnings_only = False

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter the log: words (enter applies); w: warnings and errors only", id="log-filter")
        view = LogView(id="fulllog")
        self._fill(view)  # before the first frame
        yield view
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LogView).focus()

    def _shows(self, line: Text) -> bool:
        if self.warnings_only and not any(str(span.style) in ("red", "yellow") for span in line.spans):
            return False
        return self.needle.lower() in line.plain.lower()

    def _fill(self, view: LogView | None = None) -> None:
        view = view or self.query_one(LogView)
        shown = [line for line in self.lines if self._shows(line)]
        view.set_lines(shown)
        what = ("warnings and errors" if self.warnings_only else "all") + (f" containing {self.needle!r}" if self.needle else "")
        view.border_title = f"log: {len(shown)} of {len(self.lines)} lines, {what}  ·  / filters, w warnings, escape back"

    def add(self, line: Text) -> None:
        if self._shows(line):
            self.query_one(LogView).append(line)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.needle = event.value.strip()
        self._fill()
        self.query_one(LogView).focus()

    def action_focus_filter(self) -> None:
        self.query_one(Input).focus()

    def action_warnings(self) -> None:
        self.warnings_only = not self.warnings_only
        self._fill()

    def action_back(self) -> None:
        if self.query_one(Input).has_focus:
            self.query_one(LogView).focus()
        else:
            self.app.pop_screen()
