"""Snapshot tests of the app's screens (pytest-textual-snapshot), given a scripted engine with
live calls: the panes render real CallSnapshots of fixed state, so each screen reads the same on
every run. Also: the app's keys reach the engine as commands.

Refresh after an intended UI change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import io
import logging
import re

import pytest
from rich.console import Console
from textual.binding import Binding

from aiagent_tui import app as app_module
from aiagent_tui.app import AiAgentApp
from engine.sessions import ConversationState, TurnTimeline
from aiagent_tui.screens.provider import ProviderScreen
from aiagent_tui.screens.transfer import TransferScreen
from tests.conftest import until
from tests.scripted_engine import NOW, ScriptedEngine, ScriptedRuntime, freeze_session_clock


@pytest.fixture(autouse=True)
def still_clock(monkeypatch):
    freeze_session_clock(monkeypatch)
    monkeypatch.setattr(app_module.time, "strftime", lambda fmt, *a: "12:00:00 " if fmt.startswith("%H") else "20260101")


def live_app(**kw) -> AiAgentApp:
    return AiAgentApp(ScriptedRuntime(ScriptedEngine.two_calls(**kw)))


async def _settle(pilot) -> None:
    await pilot.pause(0.6)


def test_main_screen_with_live_calls(snap_compare):
    assert snap_compare(live_app(), terminal_size=(120, 40), run_before=_settle)


def test_header_shows_a_failed_model_worker(snap_compare):
    app = live_app(problems=("local-llm-worker failed: crashed 5 times in a row (signal 9)",))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settle)


def test_header_shows_where_model_work_waits(snap_compare):
    from engine.status import ModelQueue

    app = live_app()
    eng = app.runtime.engine
    eng.model_queues = (ModelQueue("local-stt-worker", 1, 0.0), ModelQueue("local-llm-worker", 4, 2.4), ModelQueue("local-tts-worker", 0, 0.0))
    # Three callers whose turns wait for the models: the list says for how long.
    eng.add_call("+4915112345678", 40.0, ConversationState.PROCESSING, conversation_since=NOW - 12.0)
    eng.add_call("5550177", 20.0, ConversationState.PROCESSING, conversation_since=NOW - 3.0)
    eng.add_call("5550178", 9.0, ConversationState.PROCESSING, conversation_since=NOW - 1.0)
    # The selected call's last turn waited 0.9 s behind the others' model work: its timeline says so.
    next(iter(eng.store)).turns.append(
        TurnTimeline(speech_end=NOW - 20.0, stt_final=NOW - 19.1, llm_first_token=NOW - 18.9, first_sentence=NOW - 18.8, tts_first_audio=NOW - 18.6, first_audio_out=NOW - 18.5, in_models_s=0.55, queued_s=0.9))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settle)


def test_second_call_selected(snap_compare):
    async def down(pilot) -> None:
        await _settle(pilot)
        await pilot.press("down")
        await pilot.pause(0.3)

    assert snap_compare(live_app(), terminal_size=(120, 40), run_before=down)


async def _select(pilot, downs: int) -> None:
    await _settle(pilot)
    await pilot.press(*["down"] * downs)
    await pilot.pause(0.3)


@pytest.mark.parametrize("downs", [2, 3], ids=["audiosocket", "websocket"])
def test_calls_on_each_transport(snap_compare, downs):
    """Calls on RTP, AudioSocket and WebSocket: the list's via column names each call's; the media
    pane of a stream call shows its far end, messages, gaps and arrival jitter, and no loss or SSRC."""
    app = AiAgentApp(ScriptedRuntime(ScriptedEngine.mixed_transports()))
    assert snap_compare(app, terminal_size=(120, 40), run_before=lambda pilot: _select(pilot, downs))


def test_calls_on_each_transport_at_80x24(snap_compare):
    app = AiAgentApp(ScriptedRuntime(ScriptedEngine.mixed_transports()))
    assert snap_compare(app, terminal_size=(80, 24), run_before=lambda pilot: _select(pilot, 3))


def test_help_screen(snap_compare):
    async def open_help(pilot) -> None:
        await _settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(live_app(), terminal_size=(120, 40), run_before=open_help)


def test_provider_picker(snap_compare):
    async def open_picker(pilot) -> None:
        await _settle(pilot)
        await pilot.press("p")
        await pilot.pause(0.3)

    assert snap_compare(live_app(), terminal_size=(120, 40), run_before=open_picker)


def test_transfer_picker(snap_compare):
    async def open_picker(pilot) -> None:
        await _settle(pilot)
        await pilot.press("t")
        await pilot.pause(0.3)

    assert snap_compare(live_app(), terminal_size=(120, 40), run_before=open_picker)


async def test_keys_become_engine_commands_on_the_selected_call():
    engine = ScriptedEngine.two_calls()
    runtime = ScriptedRuntime(engine)
    app = AiAgentApp(runtime)
    first, second = (s.call_id for s in engine.store)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.live.calls.selected == first)
        await pilot.press("b")
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, TransferScreen))
        await pilot.press("down", "enter")  # the second department: operator
        await until(pilot, lambda: ("transfer", first, "operator") in engine.commands)
        await pilot.press("down")
        await until(pilot, lambda: app.live.calls.selected == second)
        await pilot.press("h", "y")
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ProviderScreen))
        await pilot.press("up", "up", "enter")  # from local, two up: deepgram
        await until(pilot, lambda: len(engine.commands) == 5)
        await pilot.press("q")
    assert engine.commands == [
        ("barge_in", first),
        ("transfer", first, "operator"),
        ("hangup", second),
        ("default_provider", "deepgram"),
        ("call_provider", second, "deepgram"),
    ]
    assert runtime.stopped


async def test_r_reloads_the_config_and_says_what_applies_now_and_what_at_restart():
    runtime = ScriptedRuntime(ScriptedEngine.two_calls())
    app = AiAgentApp(runtime)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        await pilot.press("R")
        await until(pilot, lambda: runtime.reloads == 1 and app._notifications)
        said = [str(n.message) for n in app._notifications]
        assert runtime.reloads == 1
        assert "config profiles.default.greeting for new calls; rtp.port at the next restart" in said
        assert [n.severity for n in app._notifications] == ["warning"]  # something waits for a restart
        await pilot.press("q", "y")


async def test_what_operators_reach_for_first_filter_sort_pause_copy_and_the_whole_log():
    """/ filters the live calls, s sorts them (the selection stays on its call), space holds the
    screen still while the engine goes on, c copies the call's id, L shows the whole log."""
    from textual.widgets import DataTable

    from aiagent_tui.screens.log import LogScreen

    engine = ScriptedEngine.two_calls()
    engine.add_call("+4915112345678", 600.0, ConversationState.PROCESSING, conversation_since=NOW - 6.0)
    app = AiAgentApp(ScriptedRuntime(engine))
    ids = {s.caller_number: s.call_id for s in engine.store}
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one("#calls", DataTable)
        order = lambda: [engine.store.get(k.value).caller_number for k in table.rows]  # noqa: E731
        await until(pilot, lambda: order() == ["5550142", "5550199", "+4915112345678"])

        await pilot.press("slash", *"0199")
        await until(pilot, lambda: order() == ["5550199"])
        assert table.border_title == "calls · matching '0199'"
        await pilot.press("escape")  # clears the filter
        await until(pilot, lambda: order() == ["5550142", "5550199", "+4915112345678"])
        assert app.live.calls.filter == ""
        await pilot.press("slash", *"trunk-0000002b", "enter")  # the Asterisk channel name finds it too
        await until(pilot, lambda: order() == ["5550199"])
        await pilot.press("slash", "ctrl+u", "enter")  # an empty filter hides the line
        await until(pilot, lambda: len(order()) == 3)

        assert app.live.calls.selected == ids["5550199"] and table.cursor_row == 1  # the call the filter found stays selected
        await pilot.press("s")  # the longest first
        await until(pilot, lambda: order() == ["+4915112345678", "5550142", "5550199"])
        assert table.border_title == "calls · by time"
        assert app.live.calls.selected == ids["5550199"] and table.cursor_row == 2  # the selection moved with its call
        await pilot.press("s")  # a turn waiting for the models first
        await until(pilot, lambda: table.border_title != "calls · by time")
        assert order()[0] == "+4915112345678"
        await pilot.press("s", "s")  # by caller, then as they came
        await until(pilot, lambda: table.border_title == "calls" and order() == ["5550142", "5550199", "+4915112345678"])

        await pilot.press("space")
        await until(pilot, lambda: "PAUSED (space resumes)" in app.export_screenshot().replace("&#160;", " "))
        engine.add_call("5550777", 1.0, ConversationState.LISTENING)
        await pilot.pause(0.8)  # eight refresh ticks (every 0.1 s) that must not show the new call
        assert "5550777" not in order()  # held still
        await pilot.press("space")
        await until(pilot, lambda: "5550777" in order())

        await pilot.press("c")
        await until(pilot, lambda: app.clipboard == ids["5550199"])
        assert any(f"copied {ids['5550199']}  (channel PJSIP/trunk-0000002b)" == str(n.message) for n in app._notifications)

        for i in range(700):  # more than the pane keeps
            app.write_log(None, f"line {i}", logging.WARNING if i % 100 == 0 else logging.INFO)
        await pilot.press("L")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        log = app.screen.query_one("#fulllog")
        await until(pilot, lambda: log.border_title.startswith("log: 701 of 701 lines"))
        await pilot.press("w")
        await until(pilot, lambda: log.border_title.startswith("log: 7 of 701 lines, warnings and errors"))
        await pilot.press("slash", *"line 60", "enter")
        await until(pilot, lambda: log.border_title.startswith("log: 1 of 701 lines"))  # line 600, a warning
        await pilot.press("escape")
        assert not isinstance(app.screen, LogScreen)
        await pilot.press("q", "y")


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_main_screen_fits_the_terminal(snap_compare, size):
    """From an 80x24 SSH session (the calls above; the transcript and the turn timeline below;
    numbers such as +4915112345678 whole) to a wide screen (every pane, the provider column)."""
    app = live_app()
    app.runtime.engine.add_call("+4915112345678", 600.0, ConversationState.PROCESSING, conversation_since=NOW - 6.0)
    assert snap_compare(app, terminal_size=size, run_before=_settle)


async def test_a_refresh_tick_or_log_line_while_the_app_closes_is_ignored():
    # The app's widgets are removed before its interval timer stops: a tick in between once failed CI.
    engine = ScriptedEngine.two_calls()
    app = AiAgentApp(ScriptedRuntime(engine))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
    app.engine = engine  # as it still is during the close, before on_unmount
    app.refresh_panes()
    app.write_log(None, "a warning logged while closing")
    assert app.log_lines[-1].plain.endswith("a warning logged while closing")


# ---- the layout follows the terminal (issue 50's rough edges)

RESIZES = [(80, 24), (200, 60), (120, 40)]  # from 120x40, one after the other


def _screen(app: AiAgentApp) -> str:
    """The screen as drawn (text and colours), without the ids each export makes up."""
    return re.sub(r"terminal-\d+", "terminal", app.export_screenshot())


def _shown(app: AiAgentApp) -> str:
    return app.export_screenshot().replace("&#160;", " ")


@pytest.mark.parametrize("steps", [1, 2, 3], ids=["120x40-80x24", "80x24-200x60", "200x60-120x40"])
def test_a_resized_terminal_is_laid_out_for_its_new_size(snap_compare, steps):
    """120x40 → 80x24 → 200x60 → 120x40, one resize each: the compact layout at 80x24, every
    pane at 200x60, the normal one back at 120x40 (the pictures of the test below)."""

    async def resize(pilot) -> None:
        await _settle(pilot)
        for size in RESIZES[:steps]:
            await pilot.resize_terminal(*size)
            await pilot.pause(0.3)

    assert snap_compare(live_app(), terminal_size=(120, 40), run_before=resize)


LONG_LOG_LINE = "a log line longer than the pane is wide at any of these sizes, " * 4


async def test_each_size_after_a_resize_is_what_a_fresh_start_at_that_size_shows():
    """Every pane, the header, the footer and the log's lines (wrapped again) as if started so."""
    fresh: dict[tuple[int, int], str] = {}
    for size in RESIZES:
        app = live_app()
        async with app.run_test(size=size) as pilot:
            await _settle(pilot)
            app.write_log(None, LONG_LOG_LINE)
            await _settle(pilot)
            fresh[size] = _screen(app)
    app = live_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await _settle(pilot)
        app.write_log(None, LONG_LOG_LINE)
        for size in RESIZES:
            await pilot.resize_terminal(*size)
            await _settle(pilot)
            assert _screen(app) == fresh[size], f"after the resize to {size[0]}x{size[1]}"


async def test_warnings_have_a_line_of_their_own_and_the_counters_stay():
    """A reload waiting for a restart, a model wait over 5 s, ARI down: each on a line under the
    header, which keeps the call counters; the line goes when the warnings do."""
    from aiagent_tui.widgets import HeaderBar, WarningBar

    app = live_app()
    eng = app.runtime.engine
    async with app.run_test(size=(120, 40)) as pilot:
        bar, body = app.query_one(WarningBar), app.query_one("#body")
        await until(pilot, lambda: "calls 2/50" in _text(app.query_one(HeaderBar)))
        assert not bar.display
        height = body.size.height
        eng.problems = ("config reload: rtp.port changes at the next restart", "model work waiting 6.2 s (health.max_model_wait_s 5.0)")
        await until(pilot, lambda: bar.display and bar.size.height == 2)
        header = _text(app.query_one(HeaderBar))
        assert "calls 2/50" in header and "failed 1" in header and "refused 0" in header
        assert _text(bar).splitlines() == ["⚠ config reload: rtp.port changes at the next restart", "⚠ model work waiting 6.2 s (health.max_model_wait_s 5.0)"]
        assert body.size.height == height - 2  # the panes make room: nothing is drawn over

        eng.problems = ()
        await until(pilot, lambda: not bar.display)
        await until(pilot, lambda: body.size.height == height)
        await pilot.press("q", "y")


def _text(widget) -> str:
    """What a Static shows, as text (each line cut where the widget cuts it)."""
    out = Console(width=widget.content_region.width or 200, color_system=None, file=io.StringIO())
    out.print(widget.content)
    return out.file.getvalue()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_the_footer_always_shows_help_and_quit_and_the_help_fits_and_scrolls(size):
    from textual.containers import VerticalScroll

    from aiagent_tui.screens.help import HelpScreen
    from aiagent_tui.widgets import KeyFooter
    from textual.widgets._footer import FooterKey

    app = live_app()
    async with app.run_test(size=size) as pilot:
        await _settle(pilot)
        footer = app.query_one(KeyFooter)
        keys = {k.key: k for k in footer.query(FooterKey)}
        assert {"question_mark", "q"} <= set(keys)
        assert all(k.region.right <= size[0] for k in keys.values())  # every key shown whole, none past the edge
        if size == (80, 24):
            assert keys["question_mark"].description == "all keys"  # some keys are only on ?

        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        box = app.screen.query_one("#help", VerticalScroll)
        await pilot.pause()
        assert box.region.width <= size[0] and box.region.height <= size[1]
        assert box.border_subtitle and "esc/q/? close" in box.border_subtitle
        if size == (80, 24):  # taller than the terminal: the keys scroll it to its end and back
            assert box.max_scroll_y > 0
            await pilot.press("end")
            await until(pilot, lambda: box.scroll_y == box.max_scroll_y)
            assert "dialogs" in _shown(app)  # its last lines
            await pilot.press("home")
            await until(pilot, lambda: box.scroll_y == 0)
            await pilot.press("pagedown", "down")
            await until(pilot, lambda: box.scroll_y > 1)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


def test_help_at_80x24_scrolled_to_its_end(snap_compare):
    async def help_end(pilot) -> None:
        await _settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        await pilot.press("end")
        await pilot.pause(0.3)

    assert snap_compare(live_app(), terminal_size=(80, 24), run_before=help_end)


def test_warnings_at_80x24_under_the_compact_header(snap_compare):
    app = live_app(problems=("config reload refused: profiles.dental.greeting: field required", "local-llm-worker failed: crashed 5 times in a row (signal 9)"))
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settle)


def test_help_lists_every_key_of_the_live_calls():
    from aiagent_tui.screens.calls import CallsScreen
    from aiagent_tui.screens.help import KEYS

    listed = {key for key, _ in KEYS}
    app = live_app()
    for binding in [*CallsScreen.BINDINGS, *AiAgentApp.BINDINGS]:
        assert isinstance(binding, Binding)
        assert app.get_key_display(binding) in listed, binding


async def test_the_whole_log_is_on_its_first_frame():
    """L with thousands of lines: they are drawn on the screen's first frame (RichLog showed an
    empty box until it had rendered every one), the newest at the bottom; Home and End scroll."""
    from aiagent_tui.screens.log import LogScreen, LogView

    app = live_app()
    async with app.run_test(size=(80, 24)) as pilot:
        for i in range(3000):
            app.write_log(None, f"line {i} " + ("and a long one that folds at the width " * 4 if i % 10 == 0 else "short"))
        app.write_log(None, "the newest line")
        await app.push_screen(LogScreen(app.log_lines))
        assert "the newest line" in _shown(app)  # no pause: the first frame
        view = app.screen.query_one(LogView)
        await until(pilot, lambda: view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y)  # laid out: at the end
        await pilot.press("home")
        await until(pilot, lambda: view.scroll_y == 0 and "line 0 and" in _shown(app))
        await pilot.press("end")
        await until(pilot, lambda: view.scroll_y == view.max_scroll_y and "the newest line" in _shown(app))
        app.write_log(None, "one more")
        await until(pilot, lambda: "one more" in _shown(app))  # at the end, it follows


async def test_the_list_and_the_selected_calls_panes_show_one_reading():
    """At every tick the selected call's row and its panes come from the same reading: a state
    change shows in both at once (the list was redrawn twice a second, the panes ten times)."""
    from textual.widgets import DataTable

    from aiagent_tui.widgets import GatingPane

    app = live_app()
    eng = app.runtime.engine
    first = next(iter(eng.store))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.live.calls.selected == first.call_id)
        table = app.query_one("#calls", DataTable)
        for state in (ConversationState.PROCESSING, ConversationState.AGENT_SPEAKING, ConversationState.LISTENING):
            first.conversation = state
            app.refresh_panes()  # one tick, whichever of the five
            words = state.value.replace("_", " ")
            assert str(table.get_cell(first.call_id, "state")) == words
            assert f"state     {words}" in _text(app.query_one(GatingPane))
        await pilot.press("q", "y")


def test_the_readme_key_table_has_every_key_of_every_screen():
    from pathlib import Path

    from aiagent_tui.screens.call_detail import CallDetailScreen
    from aiagent_tui.screens.calls import CallsScreen
    from aiagent_tui.screens.history import HistoryScreen
    from aiagent_tui.screens.log import LogScreen

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    keys = readme[readme.index("## The keys"):]
    keys = keys[: keys.index("\n## ")]
    app = live_app()
    named = {"space": "space", "escape": "escape", "enter": "enter"}
    for screen in (CallsScreen, AiAgentApp, LogScreen, HistoryScreen, CallDetailScreen):
        for binding in screen.BINDINGS:
            assert isinstance(binding, Binding)
            for key in binding.key.split(","):
                shown = app.get_key_display(Binding(key, binding.action))
                assert (named[key] if key in named else f"`{shown}`") in keys, f"{screen.__name__}: {key} ({binding.description})"
