"""Items 5, 9 and 10 of the fault probe: what a careless operator does (a config that is not UTF-8,
a provider with no key picked in the app, --sim on a PBX whose Asterisk holds the port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aiagent_tui.runtime import Runtime
from aiagent_tui.app import AiAgentApp, ProviderScreen
from tests.conftest import free_port, until
from tests.test_tui import app_config

CLI = Path(sys.executable).parent / "aiagent-tui"

BAD_CONFIGS = {
    "latin1.toml": ("[asterisk]\napp = \"caf\xe9\"\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 2)"),
    "utf16.toml": ("[rtp]\nport = 1\n".encode("utf-16"), "not UTF-8 text"),
    "binary.toml": (bytes(range(256)), "not UTF-8 text"),
    "syntax.toml": (b"[rtp\nport = 1\n", "not valid TOML"),
    "types.toml": (b"[rtp]\nport = \"eighty\"\n", "rtp.port: Input should be a valid integer"),
    "unknown.toml": (b"[rtp]\nprot = 18080\n", "rtp.prot: Extra inputs are not permitted"),
    "scalar.toml": (b"rtp = 5\n", "(while applying environment variable RTP_PORT)"),
}


def run_cli(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_every_bad_config_names_the_file_and_exits_2(tmp_path, name):
    content, expected = BAD_CONFIGS[name]
    path = tmp_path / name
    path.write_bytes(content)
    for command in (["check-config"], ["--no-ui"]):
        env = {"RTP_PORT": "0"} if name == "scalar.toml" else {}
        r = run_cli("--config", str(path), *command, cwd=tmp_path, **env)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and str(path) in r.stderr and expected in r.stderr, r.stderr


def test_config_that_is_a_directory_or_unreadable(tmp_path):
    r = run_cli("--config", str(tmp_path), "check-config", cwd=tmp_path)
    assert r.returncode == 2 and f"{tmp_path}: cannot read" in r.stderr


def held_port(kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


@pytest.mark.parametrize("what, kind, env, setting", [
    ("sim", socket.SOCK_STREAM, "ASTERISK_ARI_PORT", "asterisk.ari_port (ASTERISK_ARI_PORT)"),
    ("rtp", socket.SOCK_DGRAM, "RTP_PORT", "rtp.port (RTP_PORT)"),
    ("health", socket.SOCK_STREAM, "HEALTH_PORT", "health.port (HEALTH_PORT)"),
])
def test_a_port_clash_is_one_line_naming_port_and_setting(tmp_path, what, kind, env, setting):
    held = held_port(kind)
    port = held.getsockname()[1]
    try:
        ports = {"ASTERISK_ARI_PORT": str(free_port()), "RTP_PORT": "0", "HEALTH_PORT": "0", env: str(port)}
        r = run_cli("--sim", "--no-ui", cwd=tmp_path, AIAGENT_MEDIA_DIR=str(tmp_path / "m"), AIAGENT_PROVIDER="tone", **ports)
    finally:
        held.close()
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("aiagent-tui:")]  # the rest: INFO log lines
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"127.0.0.1:{port}" in lines[0] and setting in lines[0]


async def test_app_with_sim_port_taken_exits_non_zero_with_one_line(tmp_path, capsys):
    held = held_port(socket.SOCK_STREAM)
    cfg = app_config(tmp_path)
    cfg.asterisk.ari_port = held.getsockname()[1]
    try:
        app = AiAgentApp(rt := Runtime(cfg, sim=True, demo_interval_s=None))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: not app.is_running)  # the exit is handled: its message printed
    finally:
        held.close()
    assert app.exit_code == 1 and app.engine is None and rt.engine is None and rt.pbx is None
    err = " ".join(capsys.readouterr().err.split())  # the terminal wraps it
    assert "cannot start the simulated PBX" in err and "ASTERISK_ARI_PORT" in err and "Traceback" not in err


async def test_picking_a_provider_that_is_not_ready_is_refused_visibly(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    app = AiAgentApp(rt := Runtime(app_config(tmp_path), sim=True, demo_interval_s=None), dump_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: rt.engine is not None and rt.engine.ari_connected)
        eng = rt.engine
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ProviderScreen))
        # The cursor starts on the provider in use: Enter keeps it.
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, ProviderScreen))
        await pilot.pause()  # the choice is handled
        assert eng.default_provider == "tone"
        # Deepgram without a key: refused, said so, and new calls stay on tone.
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ProviderScreen))
        await pilot.press("up", "up", "up")  # deepgram, echo, local, tone: from tone to deepgram
        await pilot.press("enter")
        await until(pilot, lambda: any("not ready" in n.message for n in app._notifications))
        note = next(n for n in app._notifications if "not ready" in n.message)
        assert note.severity == "error" and "new calls stay on tone" in note.message
        assert eng.default_provider == "tone"
        rec = rt.pbx.place_call(hold_s=0.5)
        await until(pilot, lambda: rec.finished.is_set())
        assert rec.report(rt.pbx)["bridged"]
        assert eng.store.calls_failed == 0
