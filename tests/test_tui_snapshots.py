"""Snapshot tests of the app's screens (pytest-textual-snapshot). With no PBX reachable the
screen is deterministic: ARI down, no calls, the help screen over it.

Refresh after an intended UI change with: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from aiagent_tui import app as app_module
from aiagent_tui.app import AiAgentApp
from engine.config import load_config

# Fixed ports nothing listens on, so the header and the ARI error read the same every run.
ENV = {"ASTERISK_ARI_PORT": "1", "RTP_PORT": "38551", "HEALTH_PORT": "38552", "AIAGENT_PROVIDER": "tone"}


@pytest.fixture
def quiet_app(tmp_path, monkeypatch):
    monkeypatch.setattr(app_module.time, "strftime", lambda fmt, *a: "12:00:00 " if fmt.startswith("%H") else "20260101")
    cfg = load_config(None, env={**ENV, "AIAGENT_MEDIA_DIR": str(tmp_path / "media")})
    cfg.asterisk.reconnect_initial_s = 30.0  # one failed connect, then a long wait: a stable screen
    return AiAgentApp(cfg)


async def _settle(pilot) -> None:
    await pilot.pause(1.0)


def test_main_screen(snap_compare, quiet_app):
    assert snap_compare(quiet_app, terminal_size=(120, 40), run_before=_settle)


def test_help_screen(snap_compare, quiet_app):
    async def open_help(pilot) -> None:
        await _settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.3)

    assert snap_compare(quiet_app, terminal_size=(120, 40), run_before=open_help)
