"""Reloading config.toml while calls are up: SIGHUP (systemctl reload) or the console's R."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request

from aiagent_tui.runtime import Runtime
from engine.config import load_config
from pbxsim.server import SimPBX
from pbxsim.script import Pause, WaitAgentDone
from tests.conftest import BIN, free_port, get_json, history_of, wait_for, wait_until


def _write(path, pbx_port: int, tmp_path, greeting: str, extra: str = "") -> None:
    path.write_text(f"""
[asterisk]
ari_port = {pbx_port}
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
default = "local"
[playback]
downstream_mode = "stream"
[profiles.default]
greeting = "{greeting}"
silence_prompt_s = 0
{extra}
""")


async def test_a_reload_gives_new_calls_the_new_profile_and_keeps_calls_in_progress_and_a_bad_file_is_refused(tmp_path, monkeypatch):
    """A call is up when the file changes (greeting, VAD timing, the RTP port) and is reloaded: the
    next caller hears the new greeting; the call in progress keeps the config it started with; the
    RTP port is named as waiting for a restart. Then a broken file is refused whole: the running
    config stays, and the header says so."""
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    pbx = SimPBX(seed=7)
    await pbx.start(port=0)
    path = tmp_path / "config.toml"
    _write(path, pbx.port, tmp_path, "Hello, this is the old greeting.")
    rt = Runtime(load_config(path), config_path=path)
    try:
        eng = await rt.start()
        assert await eng.wait_ari_connected(5)
        first = pbx.place_call(script=[WaitAgentDone(0.8, 30.0), Pause(60.0)], caller_number="5550001")
        await wait_for(lambda: first.id in eng.calls.calls and eng.store.get(first.id) is not None and len(eng.store.get(first.id).transcript) >= 1, timeout=60)
        running = eng.calls.calls[first.id]

        _write(path, pbx.port, tmp_path, "Welcome, this is the new greeting.", "[vad]\nend_ms = 700\n")
        path.write_text(path.read_text().replace("port = 0\n[health]", "port = 18099\n[health]"))
        result = await rt.reload()
        assert result.refused is None and not result.failed
        assert set(result.applied) == {"profiles.default.greeting", "vad.end_ms"}
        assert result.restart == ("rtp.port",)
        assert any("rtp.port changed: restart to apply" in p for p in eng.summary().problems)
        assert eng.rtp.port != 18099  # bound at start

        second = pbx.place_call(script=[WaitAgentDone(0.8, 30.0)], caller_number="5550002")
        await wait_for(second.finished.is_set, timeout=60)
        rec = await history_of(eng, second.id)
        assert rec.transcript[0].role == "agent" and rec.transcript[0].text == "Welcome, this is the new greeting."
        # The call in progress: still up, on the config it started with.
        assert first.id in eng.calls.calls and not first.finished.is_set()
        assert running.config.vad.end_ms == 500 and running.profile.greeting == "Hello, this is the old greeting."
        assert eng.store.get(first.id).transcript[0].text == "Hello, this is the old greeting."

        good = eng.config
        path.write_text(path.read_text().replace("end_ms = 700", "end_ms = 50"))
        refused = await rt.reload()
        assert refused.refused is not None and "vad.end_ms" in refused.refused
        assert eng.config is good and eng.calls.config is good
        assert any(p.startswith("config reload refused (the running config stays): ") for p in eng.summary().problems)

        path.write_text(path.read_text().replace("end_ms = 50", "end_ms = 700") + '\n[profiles.sales]\nmatch = ["200"]\nprovider = "nosuch"\n')
        refused = await rt.reload()
        assert refused.refused is not None and "profiles.sales.provider" in refused.refused and eng.config is good

        # A default provider that cannot take calls (no Deepgram key here): said, and new calls stay put.
        path.write_text(path.read_text().split("\n[profiles.sales]")[0].replace('default = "local"', 'default = "deepgram"'))
        result = await rt.reload()
        assert result.refused is None and any(f.startswith("providers.default: ") for f in result.failed), result
        assert eng.default_provider == "local" and eng.config.providers.default == "local"
    finally:
        await rt.stop()
        await pbx.stop()


def test_sighup_reloads_the_headless_service_and_a_bad_file_leaves_it_running(tmp_path):
    """``systemctl reload``: SIGHUP re-reads the file; /health shows the last reload. A file that is
    not TOML is refused, the service keeps running on what it had."""
    sim_port, health_port = free_port(), free_port()
    sim = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(sim_port), "--rtp-start", "22400", "--rtp-end", "22500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "config.toml"
    (tmp_path / "media").mkdir()
    _write(path, sim_port, tmp_path, "Hello.")
    path.write_text(path.read_text().replace('default = "local"', 'default = "echo"').replace("port = 0\n[console]", f"port = {health_port}\n[console]"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIAGENT_", "ASTERISK_", "RTP_", "HEALTH_"))}
    eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(path), "--no-ui"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    health = f"http://127.0.0.1:{health_port}/health"
    try:
        wait_until(lambda: get_json(health)[1]["ari_connected"])
        assert get_json(health)[1]["last_reload"] is None
        path.write_text(path.read_text().replace('greeting = "Hello."', 'greeting = "Good morning."'))
        eng.send_signal(signal.SIGHUP)
        wait_until(lambda: get_json(health)[1]["last_reload"] is not None)
        assert get_json(health)[1]["last_reload"]["applied"] == ["profiles.default.greeting"]

        path.write_text("[vad\nend_ms = ")
        eng.send_signal(signal.SIGHUP)
        wait_until(lambda: get_json(health)[1]["last_reload"]["refused"] is not None)
        doc = get_json(health)[1]
        assert "not valid TOML" in doc["last_reload"]["refused"] and any("config reload refused" in p for p in doc["problems"])
        with urllib.request.urlopen(health.replace("/health", "/metrics"), timeout=5) as r:
            assert "ai_agent_config_reload_refused 1.0" in r.read().decode()
        assert eng.poll() is None
    finally:
        sim.terminate()
        eng.send_signal(signal.SIGTERM)
        try:
            out = eng.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            eng.kill()
            out = eng.communicate()[0]
        sim.wait(10)
    assert eng.returncode == 0, out
    assert "config reloaded: profiles.default.greeting for new calls" in out and "config reload refused, the running config stays" in out
