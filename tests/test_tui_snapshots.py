"""Snapshot tests of the app's screens (pytest-textual-snapshot), given a scripted engine with
live calls: the panes render real CallSnapshots of fixed state, so each screen reads the same on
every run. Also: the app's keys reach the engine as commands.

Refresh after an intended UI change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import logging

import pytest

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
