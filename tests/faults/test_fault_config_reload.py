"""A careless reload: the config file emptied, or moved away (also the implicit ./config.toml), a
profile deleted, a setting changed in the file that the environment overrides. Nothing may wipe
the profiles of new calls while reading as a normal edit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from aiagent_tui.runtime import Runtime
from engine.config import load_config
from pbxsim.server import SimPBX
from tests.conftest import history_of, wait_for

PROFILES = """
[profiles.sales]
match = ["200"]
greeting = "Sales, hello."
[profiles.support]
match = ["300"]
greeting = "Support, hello."
"""


def write_config(path: Path, pbx: SimPBX, tmp_path: Path, profiles: str = PROFILES, extra: str = "") -> None:
    path.write_text(f"""
[asterisk]
ari_port = {pbx.port}
reconnect_initial_s = 0.05
reconnect_max_s = 0.5
[rtp]
port = 0
[health]
port = 0
[console]
socket = "{tmp_path / 'console.sock'}"
[storage]
media_dir = "{tmp_path / 'media'}"
[history]
path = "{tmp_path / 'history.sqlite3'}"
[providers]
default = "echo"
{extra}
{profiles}
""")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    # The file is what these tests change: no override from the shell that runs them.
    for var in list(os.environ):
        if var.startswith(("AIAGENT_", "ASTERISK_", "RTP_", "HEALTH_", "ARI_")):
            monkeypatch.delenv(var)


async def profile_of_a_call(pbx: SimPBX, eng, dialled: str) -> str:
    rec = pbx.place_call(hold_s=0.3, dialled=dialled)
    await wait_for(rec.finished.is_set, timeout=20)
    return (await history_of(eng, rec.id)).profile


@pytest.mark.parametrize("how", ["emptied", "comments only", "moved away", "implicit ./config.toml moved away"])
async def test_an_empty_or_missing_file_is_refused_and_every_profile_stays(pbx, tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.toml"
    write_config(path, pbx, tmp_path)
    given: str | Path = "config.toml" if how.startswith("implicit") else path
    rt = Runtime(load_config(given), config_path=given)
    try:
        eng = await rt.start()
        assert await eng.wait_ari_connected(5)
        running = eng.config
        if how == "emptied":
            path.write_text("")
        elif how == "comments only":
            path.write_text("# the settings are elsewhere now\n\n")
        else:
            path.rename(tmp_path / "config.toml.old")
        result = await rt.reload()
        assert result.refused is not None and str(path) in result.refused, result
        assert ("empty" if how in ("emptied", "comments only") else "not found") in result.refused
        # The running config stays, for new calls too: the sales line still gets sales.
        assert eng.config is running and set(eng.config.profiles) == {"default", "sales", "support"}
        problems = eng.summary().problems
        assert any(p.startswith("config reload refused (the running config stays): ") for p in problems), problems
        assert await profile_of_a_call(pbx, eng, "200") == "sales"
    finally:
        await rt.stop()


async def test_removed_profiles_are_named_and_overridden_settings_are_said(pbx, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "config.toml"
    write_config(path, pbx, tmp_path)
    monkeypatch.setenv("AIAGENT_PROVIDER", "echo")
    rt = Runtime(load_config(path), config_path=path)
    try:
        eng = await rt.start()
        assert await eng.wait_ari_connected(5)
        # support is deleted; the file picks tone as the default, which AIAGENT_PROVIDER overrides.
        write_config(path, pbx, tmp_path, PROFILES.split("[profiles.support]")[0].replace("Sales, hello.", "Sales here."))
        path.write_text(path.read_text().replace('default = "echo"', 'default = "tone"'))
        result = await rt.reload()
        assert result.refused is None
        assert result.removed_profiles == ("support",)
        assert result.applied == ("profiles.sales.greeting",)  # the removed one is not "applied"
        assert result.overridden == ("providers.default (AIAGENT_PROVIDER)",)
        lines = [r for r in caplog.records if r.getMessage().startswith("config reloaded: ")]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING
        text = lines[0].getMessage()
        assert "profiles removed: support" in text
        assert "the environment overrides the file for providers.default (AIAGENT_PROVIDER): the file's value has no effect" in text
        assert eng.default_provider == "echo"
        assert await profile_of_a_call(pbx, eng, "300") == "default"
        assert await profile_of_a_call(pbx, eng, "200") == "sales"
    finally:
        await rt.stop()
