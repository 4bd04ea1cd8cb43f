"""? : every key of the live calls' screen and what its numbers mean, in a box that fits an 80x24
terminal and scrolls (the arrows, PgUp/PgDn, Home/End); escape, q or ? closes it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from engine.verdicts import JITTER_MS, LAST_PACKET_S, LOSS_PCT, PACING_MS

# (key as the footer shows it, what it does): each line at most 72 columns, nothing wraps at 80.
KEYS = (
    ("↑ ↓", "select a call"),
    ("/", "filter the calls: caller, state, provider, profile, channel"),
    ("escape", "clear the filter"),
    ("s", "sort: as they came, the longest, waiting first, by caller"),
    ("space", "pause the screen (the engine goes on); space again resumes"),
    ("c", "copy the call's id (also over SSH; the notice shows it)"),
    ("p", "provider for new calls, and the selected call's next turn"),
    ("b", "barge-in: stop the agent on the selected call now"),
    ("m", "listen to the selected call (both sides or one); m stops"),
    ("w", "whisper: a line the agent says next, or an instruction"),
    ("k", "take over: talk to the caller yourself; k again hands back"),
    ("i", "bring a person in: a department, introduced or added"),
    ("t", "transfer the selected call to one of its departments"),
    ("h", "hang up the selected call (asks first)"),
    ("d", "dump the selected call to a JSON file"),
    ("H", "call history: past calls, diagnosed, replayed"),
    ("L", "the whole log: / filters it, w shows only warnings"),
    ("R", "reload config.toml (new calls get it; calls up keep theirs)"),
    ("?", "this help"),
    ("q", "quit (asks first if calls would be hung up; attached: detach)"),
)

# (name as the screen shows it, what it means): the thresholds are engine/verdicts.py's.
NUMBERS = (
    ("loss", f"caller packets lost ({LOSS_PCT.warn:g} %, {LOSS_PCT.bad:g} %)"),
    ("jitter", f"how unevenly they arrive ({JITTER_MS.warn:g} ms, {JITTER_MS.bad:g} ms)"),
    ("reord/dup", "packets out of order / twice"),
    ("last pkt", f"since the caller's last packet ({LAST_PACKET_S.warn:g} s, {LAST_PACKET_S.bad:g} s;\na quiet caller's phone may send none)"),
    ("out", "packets to the caller; dry: the agent's audio ran out\nmid-sentence (the caller heard a gap)"),
    ("via", "the call's media: rtp, asock (AudioSocket), ws (WebSocket)"),
    ("gaps", "AudioSocket, WebSocket (TCP: nothing lost): the caller's\naudio paused over 100 ms (a stall, or a quiet caller's phone\n"
             "sending nothing); max: the longest; jitter: arrival jitter"),
    ("pacing", f"how late a 20 ms frame went out ({PACING_MS.warn:g} ms, {PACING_MS.bad:g} ms:\nthe engine is overloaded)"),
    ("dB", "the caller's level (0 is full scale; speech about -30,\nsilence under -50)"),
    ("GATED", "the caller is not listened to while the agent speaks\n(except for barge-in); open: heard"),
    ("waiting Ns", "a turn has waited that long for the models (silence)"),
    ("timeline", "per turn, from the caller's last voiced frame: eos (the\nwait until the engine decides they have finished), STT,\n"
                 "the LLM's first sentence, TTS, first audio out; N ms\nwaiting for models: of it, behind other calls' model work"),
)

OTHER_SCREENS = (
    ("L log", "/ filter, w warnings only, escape back"),
    ("H history", "/ filter, r read again, enter one call, escape back"),
    ("one call", "p plays its recording, space pauses, escape back"),
    ("dialogs", "↑ ↓ and enter choose, escape cancels; y / n answer"),
)


def _rows(text: Text, rows: tuple[tuple[str, str], ...], width: int) -> None:
    for name, means in rows:
        text.append(f"  {name:{width}s}", style="bold")
        text.append(means.replace("\n", "\n  " + " " * width) + "\n")


def help_text() -> Text:
    text = Text.from_markup("[b]aiagent-tui[/b]: the live calls of the AI voice agent\n\n[b]Keys[/b]\n")
    _rows(text, KEYS, 7)
    text.append_text(Text.from_markup("\n[b]The numbers[/b] (yellow: worse than a good line; red: a caller hears it)\n"))
    _rows(text, NUMBERS, 11)
    text.append_text(Text.from_markup("\n[b]The other screens[/b]\n"))
    _rows(text, OTHER_SCREENS, 11)
    return text


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        box = VerticalScroll(Static(help_text(), id="help-text"), id="help")
        box.border_title = "help"
        box.border_subtitle = "↑ ↓ PgDn End scroll · esc/q/? close"
        yield box

    def on_mount(self) -> None:
        self.query_one("#help").focus()  # the arrows, PgUp/PgDn and Home/End scroll it
