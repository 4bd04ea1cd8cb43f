"""One call from the history, what ``aiagent-tui calls diagnose`` and ``calls show`` print, and
its recording replayed with the transcript following.

The database is read on a worker thread (never on the app's loop).
"""

from __future__ import annotations

import io
from typing import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static

from aiagent_tui.history_cli import show
from aiagent_tui.monitor import MonitorUnavailable, OpenOutput, Replay
from engine.api import CallRecord, HistoryDb
from engine.diagnosis import Diagnosis, diagnose
from engine.history import db_error
from engine.verdicts import STYLE
from providers.profile import Norms
from providers.redact import shown_url

Diagnose = Callable[[CallRecord], Diagnosis]


def default_norms(rec: CallRecord) -> Diagnosis:
    return diagnose(rec, Norms())


class CallDetailScreen(Screen[None]):
    """One call from the history: what ``aiagent-tui calls diagnose`` and ``calls show`` print; ``p``
    plays its recording on this machine's sound device with the transcript following."""

    BINDINGS = [
        Binding("escape", "back", "back"),
        Binding("p", "replay", "play recording"),
        Binding("space", "pause", "pause"),
    ]

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
    text.append(d.headline + "\n", style=STYLE[d.level])
    for f in d.findings:
        text.append(f"  {f.level:4s} ", style=STYLE[f.level])
        text.append(f.says + "\n")
        for e in f.evidence:
            text.append(f"        - {e}\n", style="dim")
    return text
