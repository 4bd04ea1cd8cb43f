"""? : the keys and what the numbers on the live calls' screen mean."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

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


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        yield Static(Text.from_markup(HELP), id="help")
