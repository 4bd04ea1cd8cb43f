"""A yes/no question before what cannot be undone: hanging a call up, quitting with calls up."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Vertical(Static(self.question), Static(Text.from_markup("[b]y[/b] yes    [b]n[/b] or [b]escape[/b] no")), id="confirm-box")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
