"""The operator's dialogs on a live call: w (a line for the agent, or an instruction), i (bring a
person in: a department and how), m (listen: both sides or one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, RadioButton, RadioSet, Static, Switch
from textual.widgets.option_list import Option

from aiagent_tui.monitor import Side
from engine.api import BringIn

_BOX_CSS = """
    {screen} {{ align: center middle; }}
    {screen} > Vertical {{ width: 72; height: auto; max-height: 90%; border: thick $primary; padding: 1 2; background: $surface; }}
    {screen} .hint {{ color: $text-muted; margin-top: 1; }}
"""


@dataclass(frozen=True, slots=True)
class Whisper:
    text: str
    instruct: bool  # False: the agent says it next; True: joins its instructions for the rest of the call


class WhisperScreen(ModalScreen[Whisper | None]):
    """w: what the operator types reaches the agent, not the caller (until the agent says it)."""

    DEFAULT_CSS = _BOX_CSS.format(screen="WhisperScreen") + """
    WhisperScreen #whisper-mode { height: auto; margin-top: 1; }
    WhisperScreen #whisper-mode Static { width: 1fr; padding: 1 0 0 1; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "cancel"), Binding("ctrl+t", "toggle_mode", "say / instruct")]

    def __init__(self, caller: str) -> None:
        super().__init__()
        self.caller = caller

    def compose(self) -> ComposeResult:
        with Vertical(id="whisper-box"):
            yield Static(f"Whisper to the agent on the call from {self.caller}:", id="whisper-title")
            yield Input(placeholder="the doctor is running 10 minutes late", id="whisper-text")
            with Horizontal(id="whisper-mode"):
                yield Switch(value=False, id="whisper-instruct")
                yield Static("", id="whisper-mode-label")
            yield Static(Text.from_markup("[b]enter[/b] send    [b]ctrl+t[/b] say next / instruction    [b]escape[/b] cancel"), classes="hint")

    def on_mount(self) -> None:
        self._label()
        self.query_one("#whisper-text", Input).focus()

    @property
    def instruct(self) -> bool:
        return self.query_one("#whisper-instruct", Switch).value

    def _label(self) -> None:
        label = "an instruction for the rest of the call (the caller does not hear it)" if self.instruct else "a line the agent says next, as its own"
        self.query_one("#whisper-mode-label", Static).update(label)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self._label()

    def action_toggle_mode(self) -> None:
        switch = self.query_one("#whisper-instruct", Switch)
        switch.value = not switch.value

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.notify("nothing to send: type a line, or escape", severity="warning")
            return
        self.dismiss(Whisper(text, self.instruct))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True, slots=True)
class BringInChoice:
    department: str
    how: BringIn


# How a person is brought in, in the operator's words (engine/api.py BringIn).
HOW: dict[BringIn, str] = {
    "introduce": "put through after the agent tells them who is calling and why",
    "bridge": "added to the call (caller, person and agent together), then the agent leaves",
    "snoop": "listens to the call and speaks to the caller (a snoop channel)",
}


class BringInScreen(ModalScreen[BringInChoice | None]):
    """i: one of the call's departments, and how they join (as t transfers, with a person on the line)."""

    DEFAULT_CSS = _BOX_CSS.format(screen="BringInScreen") + """
    BringInScreen RadioSet { width: 100%; margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, departments: dict[str, str]) -> None:
        super().__init__()
        self.departments = departments

    def compose(self) -> ComposeResult:
        with Vertical(id="bring-in-box"):
            yield Static("Bring a person into the call:")
            yield OptionList(*(Option(f"{name}  →  {target}", id=name) for name, target in self.departments.items()), id="bring-in-department")
            with RadioSet(id="bring-in-how"):
                for i, how in enumerate(get_args(BringIn)):
                    yield RadioButton(f"{how}: {HOW[how]}", value=i == 0, id=f"how-{how}")
            yield Static(Text.from_markup("[b]tab[/b] how    [b]enter[/b] on a department: bring them in    [b]escape[/b] cancel"), classes="hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @property
    def how(self) -> BringIn:
        pressed = self.query_one(RadioSet).pressed_button
        for how in get_args(BringIn):
            if pressed is not None and pressed.id == f"how-{how}":
                return how
        return "introduce"

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(BringInChoice(event.option.id, self.how))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


SIDES: dict[Side, str] = {"both": "both sides, mixed", "caller": "the caller alone", "agent": "the agent alone"}


class ListenScreen(ModalScreen[Side | None]):
    """m: what to listen to on this machine's sound device."""

    DEFAULT_CSS = _BOX_CSS.format(screen="ListenScreen")
    BINDINGS = [Binding("escape", "dismiss_none", "cancel")]

    def __init__(self, caller: str, device: str) -> None:
        super().__init__()
        self.caller = caller
        self.device = device

    def compose(self) -> ComposeResult:
        yield Vertical(
            Static(f"Listen to the call from {self.caller} on {self.device}:"),
            OptionList(*(Option(label, id=side) for side, label in SIDES.items()), id="listen-side"),
            Static(Text.from_markup("[b]enter[/b] listen    [b]m[/b] again stops    [b]escape[/b] cancel"), classes="hint"),
        )

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        side = next((s for s in SIDES if s == event.option.id), None)
        self.dismiss(side)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class OperatorBanner(Static):
    """Above the panes while this operator has a call: whose it is and how to give it back."""

    DEFAULT_CSS = """
    OperatorBanner { height: 1; padding: 0 1; background: $error; color: $text; text-style: bold; }
    """
