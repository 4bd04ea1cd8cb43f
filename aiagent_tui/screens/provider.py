"""p: the provider for new calls and the selected call, each with why it is not ready."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from providers.base import Readiness


class ProviderScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, current: str, readiness: dict[str, Readiness]) -> None:
        super().__init__()
        self.current = current
        self.readiness = readiness

    def compose(self) -> ComposeResult:
        names = sorted(self.readiness)
        opts = []
        for name in names:
            r = self.readiness[name]
            note = "" if r.ready or r.detail == "not loaded" else f"  ({r.detail})"
            opts.append(Option(f"{'● ' if name == self.current else '  '}{name}{note}", id=name))
        options = OptionList(*opts)
        if self.current in names:
            options.highlighted = names.index(self.current)
        yield Vertical(Static("Provider for new calls and the selected call:"), options, id="provider-box")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
