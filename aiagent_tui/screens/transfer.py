"""t: the departments of the selected call's profile, to transfer it to one."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option


class TransferScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, departments: dict[str, str]) -> None:
        super().__init__()
        self.departments = departments

    def compose(self) -> ComposeResult:
        options = OptionList(*(Option(f"{name}  →  {target}", id=name) for name, target in self.departments.items()))
        yield Vertical(Static("Transfer the call to:"), options, id="provider-box")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)
