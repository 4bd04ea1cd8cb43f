"""The live calls, the app's first screen: the list, the selected call's panes, the log pane, and
the keys that act on the selected call. The app hands it the engine's events and its 10 Hz tick."""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import time
from pathlib import Path
from typing import cast

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.geometry import Size
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static

from aiagent_tui.call_list import CallList
from aiagent_tui.monitor import TAP_KEY, AudioMonitor, microphone, MonitorUnavailable, OpenInput, OpenOutput, OperatorMic, Side, speaker
from aiagent_tui.screens.call_detail import Diagnose
from aiagent_tui.screens.confirm import ConfirmScreen
from aiagent_tui.screens.history import HistoryScreen
from aiagent_tui.screens.host import CallsHost
from aiagent_tui.screens.log import LogScreen
from aiagent_tui.screens.operator import SIDES, BringInChoice, BringInScreen, ListenScreen, OperatorBanner, Whisper, WhisperScreen
from aiagent_tui.screens.provider import ProviderScreen
from aiagent_tui.screens.transfer import TransferScreen
from aiagent_tui.widgets import GatingPane, HeaderBar, KeyFooter, LevelSparkline, LogPane, RtpPane, TimelinePane, TranscriptPane, VadPane, WarningBar, warnings
from engine.api import EngineView
from engine.sessions import CallEnded, CallStarted, SessionEvent, TranscriptAdded


TAKE_OVER_ANSWER_S = 3.0  # attached, the engine's yes to k shows in its view within this


def operator_name() -> str:
    """Who acts, for the call's history (attached, the engine names the socket's user instead)."""
    return f"{getpass.getuser()} (local)"


class CallsScreen(Screen[None]):
    BINDINGS = [  # the footer shows help and quit first, then these in this order while they fit
        Binding("question_mark", "app.help", "help"),
        Binding("p", "provider", "provider"),
        Binding("b", "barge_in", "barge-in"),
        Binding("m", "monitor", "monitor"),
        Binding("w", "whisper", "whisper"),
        Binding("k", "take_over", "take over"),
        Binding("i", "bring_in", "bring in"),
        Binding("t", "transfer", "transfer"),
        Binding("h", "hangup", "hang up"),
        Binding("d", "dump", "dump"),
        Binding("H", "history", "history"),
        Binding("R", "reload", "reload"),
        Binding("slash", "filter_calls", "filter"),
        Binding("s", "sort_calls", "sort"),
        Binding("space", "pause", "pause"),
        Binding("c", "copy_id", "copy id"),
        Binding("L", "full_log", "log"),
    ]

    # This machine's sound devices (tests and screenshots put fakes here); the microphone is open
    # while this operator has a call (k).
    open_output: OpenOutput = speaker
    open_input: OpenInput = microphone
    mic: OperatorMic | None = None
    _mic_watch: Timer | None = None

    def __init__(self, *, dump_dir: Path, history_url: str | None, diagnose_call: Diagnose) -> None:
        super().__init__()
        self.dump_dir = dump_dir
        self.history_url = history_url  # None: this engine keeps no history
        self.diagnose_call = diagnose_call
        self.partials: dict[str, str] = {}  # call id -> what the caller is saying, not final yet
        self.monitor: AudioMonitor | None = None
        self.paused = False  # space: the panes and the list hold still to be read; the engine goes on
        self.calls = CallList(id="callsbox")  # made here: the engine's first events may come before it is shown
        self._ticks = 0
        self._via = False  # the list's transport column: calls may come on more than one transport

    @property
    def agent_app(self) -> CallsHost:
        return cast("CallsHost", self.app)

    @property
    def engine(self) -> EngineView | None:
        return self.agent_app.engine

    # ---- layout
    def compose(self) -> ComposeResult:
        yield HeaderBar("starting…", id="header")
        yield WarningBar(id="warnings")
        with Horizontal(id="body"):
            yield self.calls
            with Grid(id="panes"):
                yield self._pane(RtpPane(id="rtp"), "RTP / SSRC")
                with Vertical(id="vadbox"):
                    yield VadPane(id="vad")
                    yield LevelSparkline([], id="spark")
                yield self._pane(GatingPane(id="gating"), "gating")
                yield self._pane(TranscriptPane(id="transcript"), "transcript")
                yield self._pane(TimelinePane(id="timeline"), "turn timeline")
        log = LogPane(id="log")
        log.border_title = "log"
        yield log
        yield KeyFooter(show_command_palette=False)  # room for the keys (^p still opens the palette)

    @staticmethod
    def _pane(widget: Static, title: str) -> Static:
        widget.add_class("pane")
        widget.border_title = title
        return widget

    def on_mount(self) -> None:
        self.query_one("#vadbox").border_title = "VAD"
        self._fit_layout(self.app.size)
        self.calls.table.focus()  # the arrow keys pick a call (the log would take them otherwise)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_layout(event.size)

    def on_screen_resume(self) -> None:
        # A resize while another full screen (L, H) was up reached that screen, not this one.
        self._fit_layout(self.app.size)

    def _fit_layout(self, size: Size) -> None:
        """Narrow (under 100 columns or 30 rows), normal, or wide (150 columns and up), from the
        size this resize brings: the CSS classes pick the panes, and the call list gets the columns
        that fit. The header is drawn again at once for its new width, not at the next tick."""
        w, h = size
        narrow = w < 100 or h < 30
        wide = w >= 150 and not narrow
        self.set_class(narrow, "-narrow")
        self.set_class(wide, "-wide")
        header = self.query_one(HeaderBar)
        header.compact = narrow
        self.query_one(GatingPane).with_level = not wide
        self.calls.set_columns(provider=wide or narrow, via=self._via)
        if self.engine is not None:
            header.show(self.engine.summary(), paused=self.paused)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # These keys act on the live calls: under a dialog or another screen they are off, and
        # the footer shows only help and quit (the app's).
        return len(self.app.screen_stack) == 1

    # ---- what the app hands over
    def follow(self, ev: SessionEvent) -> None:
        """A call's event (its log lines go to the app's write_log)."""
        match ev:
            case TranscriptAdded(call_id=cid, turn=turn) if turn.final:
                self.partials.pop(cid, None)
            case TranscriptAdded(call_id=cid, turn=turn) if turn.role == "caller":
                self.partials[cid] = turn.text
            case CallStarted(call_id=cid) if self.calls.selected is None:
                self.calls.selected = cid
            case CallEnded(call_id=cid, snapshot=snapshot):
                self.partials.pop(cid, None)
                self.calls.call_ended(snapshot)
                self._operator_call_ended(cid)

    def write_log(self, line: Text) -> None:
        self.query_one(LogPane).add(line)

    def refresh_panes(self, eng: EngineView) -> None:
        try:
            header = self.query_one(HeaderBar)
        except NoMatches:  # the app is closing: its widgets go before its timer stops
            return
        summary = eng.summary()
        header.show(summary, paused=self.paused)
        self.query_one(WarningBar).show(warnings(summary))
        if self.paused:
            return
        self._ticks += 1
        calls = self.calls
        # The list and the selected call's panes from one reading at one tick: every row twice a
        # second (the costliest thing on screen), the selected call's row at every tick with them.
        rows = eng.store.summaries()
        via = len(summary.media_transports) > 1 or any(r.transport != "rtp" for r in rows)
        if via != self._via:  # the transport column (and room for it) comes and goes with the config and the calls
            self._via = via
            self.set_class(via, "-via")
            self._fit_layout(self.app.size)
        if self._ticks % 5 == 1 or calls.selected is None:
            calls.show(rows)
        else:
            calls.show_row(next((r for r in rows if r.call_id == calls.selected), None))
        # Only the selected call is rendered in full (an ended one as it ended).
        c = eng.store.snapshot(calls.selected) if calls.selected else None
        if c is None:
            c = calls.ended_snapshot(calls.selected)
        self.query_one(RtpPane).show(c)
        self.query_one(VadPane).show(c)
        self.query_one(LevelSparkline).show(c)
        self.query_one(GatingPane).show(c)
        self.query_one(TranscriptPane).show(c, self.partials.get(calls.selected or ""))
        self.query_one(TimelinePane).show(c)

    def stop_monitor(self) -> None:
        """Off this machine's sound devices: the listening, and the microphone (the app is going)."""
        self.stop_listening()
        self._close_mic()

    # ---- keys
    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.calls.close_filter():
            event.stop()

    def _need_call(self) -> str | None:
        selected = self.calls.selected
        if (ended := self.calls.ended_snapshot(selected)) is not None:
            self.notify(f"the call from {ended.caller_number or 'an unknown number'} has ended", severity="warning")
            return None
        if self.engine is None or selected is None or self.engine.store.snapshot(selected) is None:
            self.notify("no call selected", severity="warning")
            return None
        return selected

    def action_filter_calls(self) -> None:
        self.calls.open_filter()

    def action_sort_calls(self) -> None:
        self.calls.next_sort()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.query_one(LogPane).auto_scroll = not self.paused
        if self.engine is not None:
            self.query_one(HeaderBar).show(self.engine.summary(), paused=self.paused)

    def action_copy_id(self) -> None:
        selected = self.calls.selected
        snap = self.engine.store.snapshot(selected) if self.engine is not None and selected else None
        if snap is None:
            snap = self.calls.ended_snapshot(selected)
        if snap is None:
            self.notify("no call selected", severity="warning")
            return
        # OSC 52: the terminal (even over SSH) puts it on the clipboard; the notice shows it too.
        self.app.copy_to_clipboard(snap.call_id)
        self.notify(f"copied {snap.call_id}" + (f"  (channel {snap.channel})" if snap.channel else ""), timeout=8)

    def action_full_log(self) -> None:
        self.app.push_screen(LogScreen(self.agent_app.log_lines))

    def action_history(self) -> None:
        if self.history_url is None:
            self.notify("no call history: history.enabled is false in the config", severity="warning")
            return
        self.app.push_screen(HistoryScreen(self.history_url, self.diagnose_call))

    def action_barge_in(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        if self.engine.barge_in(cid):
            self.notify(f"barge-in on {cid[-8:]}")
        else:
            self.notify("the agent is not speaking on this call: nothing to stop", severity="warning")

    def action_hangup(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        snap = self.engine.store.snapshot(cid)
        who = snap.caller_number if snap is not None and snap.caller_number else "an unknown number"

        async def answered(yes: bool | None) -> None:
            if yes and self.engine is not None:
                await self.engine.hangup(cid)
                self.notify(f"hung up the call from {who} ({cid[-8:]})")

        self.app.push_screen(ConfirmScreen(f"Hang up the call from {who}?\n(call {cid})"), answered)

    def action_transfer(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        departments = self.engine.departments(cid)
        if not departments:
            self.notify("this call's profile has no departments to transfer to", severity="warning")
            return

        def chosen(name: str | None) -> None:
            if name and self.engine is not None:
                ok = self.engine.transfer(cid, name)
                self.notify(f"transferring {cid[-8:]} to {name}" if ok else f"transfer refused: {cid[-8:]} is ending or already acting", severity="information" if ok else "error")

        self.app.push_screen(TransferScreen(departments), chosen)

    @work(exclusive=True, group="reload")
    async def action_reload(self) -> None:
        """Re-reads the config file: new calls get the profiles, prompts, timings and default
        provider it now has; calls in progress keep theirs; a bad file is refused whole."""
        if self.engine is None:
            return
        result = await self.agent_app.runtime.reload()
        severity: SeverityLevel = "error" if result.refused or result.failed else "warning" if result.warns else "information"
        self.notify(f"config {result.describe()}", title="reload", severity=severity, timeout=12)

    def action_provider(self) -> None:
        if self.engine is None:
            return
        self.app.push_screen(ProviderScreen(self.engine.default_provider, self.engine.provider_readiness()), self._provider_chosen)

    async def _provider_chosen(self, name: str | None) -> None:
        if not name or self.engine is None:
            return
        try:
            await self.engine.set_default_provider(name)
            selected = self.calls.selected
            cid = selected if selected and self.engine.store.snapshot(selected) else None
            if cid:
                await self.engine.set_call_provider(cid, name)
            self.notify(f"provider {name} for new calls" + (f" and call {cid[-8:]}" if cid else ""))
        except Exception as e:
            self.notify(f"provider {name}: {e}", severity="error", timeout=8)

    def action_monitor(self) -> None:
        """m: listen in on this machine's sound device (both sides or one); m again stops."""
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        if self.monitor is not None:
            was = self.monitor.call_id
            self.stop_listening()
            if was == cid:
                self.notify("monitor off")
                return
        monitor = self._open_monitor(cid)
        if monitor is None:
            return

        def chosen(side: Side | None) -> None:
            if side is None:
                monitor.close()
            else:
                self._listen(monitor, side)

        self.app.push_screen(ListenScreen(self._caller(cid), monitor.device), chosen)

    def stop_listening(self) -> None:
        if self.monitor is not None:
            if self.engine is not None:
                self.engine.set_audio_tap(self.monitor.call_id, None, key=TAP_KEY)
            self.monitor.close()
            self.monitor = None

    def _open_monitor(self, cid: str) -> AudioMonitor | None:
        try:
            return AudioMonitor(cid, self.open_output)
        except MonitorUnavailable as e:
            self.notify(f"cannot monitor: {e}", severity="warning", timeout=12)
            self.agent_app.write_log(cid, f"monitor unavailable: {e}", logging.WARNING)
            return None

    def _listen(self, monitor: AudioMonitor, side: Side) -> bool:
        monitor.side = side
        monitor.play_operator = self.mic is None or self.mic.call_id != monitor.call_id
        if self.engine is None or not self.engine.set_audio_tap(monitor.call_id, monitor.feed, key=TAP_KEY):
            monitor.close()
            self.notify("cannot monitor: the call has ended", severity="warning")
            return False
        self.monitor = monitor
        self.notify(f"listening to {monitor.call_id[-8:]} ({SIDES[side]}) on {monitor.device}; m stops")
        return True

    def _caller(self, cid: str) -> str:
        snap = self.engine.store.snapshot(cid) if self.engine is not None else None
        return snap.caller_number if snap is not None and snap.caller_number else "an unknown number"

    def action_whisper(self) -> None:
        """w: a line the agent says next, or an instruction for the rest of the call."""
        cid = self._need_call()
        if cid is None or self.engine is None:
            return

        def sent(whisper: Whisper | None) -> None:
            if whisper is None or self.engine is None:
                return
            act = self.engine.operator_instruct if whisper.instruct else self.engine.operator_say
            what = "instruction" if whisper.instruct else "line for the agent"
            if act(cid, whisper.text, operator_name()):
                self.notify(f"{what} sent to {cid[-8:]}: {whisper.text}")
            else:
                self.notify(f"{what} refused on {cid[-8:]} (the log says why)", severity="error")

        self.app.push_screen(WhisperScreen(self._caller(cid)), sent)

    def action_take_over(self) -> None:
        """k: the operator talks to the caller (microphone), the agent silent; k again hands back."""
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        engine = self.engine
        if self.mic is not None:
            if self.mic.call_id != cid:
                self.notify(f"you have the call {self.mic.call_id[-8:]}: select it and press k to hand it back first", severity="warning", timeout=8)
                return
            ok = engine.hand_back(cid, operator_name())
            self._close_mic()
            self.notify("handed the call back to the agent (m stops listening)" if ok else f"hand back refused on {cid[-8:]} (the log says why)", severity="information" if ok else "error")
            return
        try:
            # The microphone first: a caller taken over by an operator who cannot speak hears nothing.
            mic = OperatorMic(cid, lambda pcm16, rate: engine.operator_audio(cid, pcm16, rate), self.open_input)
        except MonitorUnavailable as e:
            self.notify(f"cannot take over: {e}", severity="warning", timeout=12)
            self.agent_app.write_log(cid, f"take over unavailable: {e}", logging.WARNING)
            return
        if not engine.take_over(cid, operator_name()):
            mic.close()
            self.notify(f"take over refused on {cid[-8:]} (the log says why)", severity="error")
            return
        self.mic = mic
        self._mic_confirmed, self._mic_opened = False, time.monotonic()
        self._mic_watch = self.set_interval(0.5, self._watch_take_over)
        # The operator hears the call (both sides) while they have it.
        if self.monitor is None or self.monitor.call_id != cid:
            self.stop_listening()
            if (monitor := self._open_monitor(cid)) is not None:
                self._listen(monitor, "both")
        if self.monitor is not None:
            self.monitor.play_operator = False  # their own voice back, late, is no help
        caller = self._caller(cid)
        self.mount(OperatorBanner(f"● you have the call from {caller} ({cid[-8:]}): talk into {mic.device}; k hands it back to the agent"), before="#body")
        self.notify(f"you have the call from {caller}: the agent is silent; k hands it back")

    def _watch_take_over(self) -> None:
        """While this operator has a call, the engine's word on it: attached, k's answer comes a
        moment later; and the engine may end a take-over itself (an action on the call)."""
        if self.mic is None or self.engine is None:
            return
        row = next((r for r in self.engine.store.summaries() if r.call_id == self.mic.call_id), None)
        if row is None:  # ended: follow() closes the microphone
            return
        if row.operator:
            self._mic_confirmed = True
        elif self._mic_confirmed:
            self._close_mic()
            self.notify(f"the agent has the call {row.call_id[-8:]} again (the log says why)", severity="warning", timeout=10)
        elif time.monotonic() - self._mic_opened > TAKE_OVER_ANSWER_S:
            self._close_mic()
            self.notify(f"take over refused on {row.call_id[-8:]} (the log says why)", severity="error", timeout=10)

    def _close_mic(self) -> None:
        if self.mic is not None:
            self.mic.close()
            self.mic = None
        if self.monitor is not None:
            self.monitor.play_operator = True
        if self._mic_watch is not None:
            self._mic_watch.stop()
            self._mic_watch = None
        for banner in self.query(OperatorBanner):
            banner.remove()

    def _operator_call_ended(self, cid: str) -> None:
        """The call this operator listens to or has taken over ended: the devices close."""
        if self.mic is not None and self.mic.call_id == cid:
            self._close_mic()
            self.notify(f"the call you had ({cid[-8:]}) has ended", severity="warning")
        if self.monitor is not None and self.monitor.call_id == cid:
            self.stop_listening()
            self.notify(f"monitor off: {cid[-8:]} has ended")

    def action_bring_in(self) -> None:
        """i: a person from one of the call's departments joins it (introduced, bridged or snooping)."""
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        departments = self.engine.departments(cid)
        if not departments:
            self.notify("this call's profile has no departments to bring a person in from", severity="warning")
            return

        def chosen(choice: BringInChoice | None) -> None:
            if choice is None or self.engine is None:
                return
            if self.engine.bring_in(cid, choice.department, choice.how, operator_name()):
                self.notify(f"bringing {choice.department} into {cid[-8:]} ({choice.how})")
            else:
                self.notify(f"bring in refused on {cid[-8:]} (the log says why)", severity="error")

        self.app.push_screen(BringInScreen(departments), chosen)

    def action_dump(self) -> None:
        cid = self._need_call()
        if cid is None or self.engine is None:
            return
        snap = self.engine.store.snapshot(cid)
        if snap is None:
            return
        path = self.dump_dir / f"call-{cid}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(dataclasses.asdict(snap), indent=2, default=str))
        self.notify(f"dumped to {path}")
