"""Quitting prints nothing that reads as a crash: no "nanobind: leaked ... soxr" lines at exit. Each
call's resamplers are soxr (nanobind) objects; one that outlives the interpreter (a frozen cycle:
Runtime freezes what exists when the engine is up) is printed as a leak on the operator's terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading

from tests.conftest import BIN, ROOT, free_port, get_json, stop_processes, wait_until


def engine_env(tmp_path, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "ASTERISK_ARI_PORT": str(free_port()), "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(free_port()),
        "AIAGENT_MEDIA_DIR": str(tmp_path), "AIAGENT_CONSOLE_SOCKET": str(tmp_path / "console.sock"), "AIAGENT_HISTORY": "false",
        "XDG_STATE_HOME": str(tmp_path), **extra,
    }


def calls_done(env: dict[str, str], n: int) -> None:
    health = f"http://127.0.0.1:{env['HEALTH_PORT']}/health"
    wait_until(lambda: get_json(health)[1]["calls_total"] >= n, timeout=60, what=f"{n} simulated calls")


def test_the_headless_service_stops_without_leak_lines(tmp_path):
    env = engine_env(tmp_path)
    eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--no-ui", "--sim", "--demo-interval", "0.5"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        calls_done(env, 3)
        eng.send_signal(signal.SIGINT)
        out, err = eng.communicate(timeout=30)
    finally:
        stop_processes(eng)
    assert eng.returncode == 0, err[-2000:]
    assert "leaked" not in err and "nanobind" not in err, err[-3000:]


def test_the_terminal_app_quits_without_leak_lines(tmp_path):
    """The app in a terminal (a pty, 120x40) with the simulator: q, y (hang the calls up); what
    the terminal shows after the app's screen is gone has no leak lines."""
    env = engine_env(tmp_path, TERM="xterm-256color")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    app = subprocess.Popen([BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--sim", "--demo-interval", "0.5"],
                           env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the app's side closed
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        calls_done(env, 3)
        os.write(master, b"q")
        wait_until(lambda: b"Quit?" in seen, what="the quit question")
        os.write(master, b"y")
        assert app.wait(30) == 0
    finally:
        stop_processes(app)
        reader.join(5)
        os.close(master)
    tail = bytes(seen[-4000:]).decode(errors="replace")
    assert "leaked" not in tail and "nanobind" not in tail, tail


SECOND_RUNTIME = """
import asyncio
from aiagent_tui.runtime import Runtime
from engine.config import load_config

async def main():
    # Two engines one after the other in one process (the test suite, the screenshots script):
    # the first one's calls are garbage when the second starts and freezes what exists.
    for _ in range(2):
        runtime = Runtime(load_config({config!r}), sim=True, demo_interval_s=0.3)
        engine = await runtime.start()
        while engine.store.calls_total < 3:
            await asyncio.sleep(0.05)
        await runtime.stop()

asyncio.run(main())
"""


def test_a_second_engine_in_one_process_exits_without_leak_lines(tmp_path):
    env = engine_env(tmp_path)
    r = subprocess.run([sys.executable, "-c", SECOND_RUNTIME.format(config=str(ROOT / "config.toml"))],
                       env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "leaked" not in r.stderr and "nanobind" not in r.stderr, r.stderr[-3000:]
