"""The terminal app in a real terminal (a pseudo-terminal, as sshd gives it), against the simulator
as its own process: what happens to live calls when the operator's session ends."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest

from tests.conftest import BIN, ROOT, THANKS, free_port, get_json, sim_call, wait_until


class Terminal:
    """``aiagent-tui`` on a pseudo-terminal, as the leader of its session (the terminal is its
    controlling terminal, so a hangup sends it SIGHUP); a thread reads the screen as a terminal
    emulator would (a full pty would block the app's writes)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the app
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the app closed its side (EIO), or we closed ours
                return
            if not data:
                return
            self.output += data

    def hang_up(self) -> None:
        """The SSH connection drops: sshd closes its side of the terminal (the kernel sends the
        session's leader SIGHUP), and the login shell passes SIGHUP on to its jobs (each job's
        process group: here the app's)."""
        os.close(self.fd)
        self.fd = -1
        os.killpg(self.pid, signal.SIGHUP)

    def wait(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reader.join(2)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"the app did not exit within {timeout} s")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.fixture
def sim():
    ari_port = free_port()
    proc = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(ari_port), "--rtp-start", "22800", "--rtp-end", "22900"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield ari_port
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


@pytest.mark.parametrize("ending", ["hangup", "sigterm"])
def test_the_operators_session_ending_hangs_up_every_call_cleanly(sim, tmp_path, ending):
    """The SSH connection drops (the terminal hangs up: SIGHUP) or the system stops the app
    (SIGTERM) while two callers talk: both are hung up by the engine, their channels and bridges
    deleted, the app exits 0 and says why in its log file, and no child process of the engine is
    taken down with it (that would be logged as a crash and restarted)."""
    health_port = free_port()
    state = tmp_path / "state"
    env = {**os.environ, "TERM": "xterm-256color", "XDG_STATE_HOME": str(state), "ASTERISK_ARI_PORT": str(sim),
           "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(health_port), "AIAGENT_MEDIA_DIR": str(tmp_path / "media")}
    term = Terminal([str(BIN / "aiagent-tui"), "--config", str(ROOT / "config.toml")], env)
    try:
        health = f"http://127.0.0.1:{health_port}/health"
        wait_until(lambda: get_json(health)[1]["ari_connected"], timeout=30)
        placer = sim_call(sim, "--count", "2", "--wav", str(THANKS), "--hold", "20", "--report", str(tmp_path / "r.json"))
        wait_until(lambda: get_json(health)[1]["active_calls"] == 2)
        if ending == "hangup":
            term.hang_up()
        else:
            os.killpg(term.pid, signal.SIGTERM)  # as `kill -- -PGID`, `timeout` or a stopped cgroup do
        assert term.wait(20) == 0
        assert placer.wait(30) == 0, placer.stdout.read() if placer.stdout else ""
    finally:
        term.close()
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["ended_by"] for c in report["calls"]] == ["ari", "ari"]
    assert report["leftover_channels"] == 0 and report["leftover_bridges"] == 0
    log = (state / "aiagent-tui" / "aiagent-tui.log").read_text()
    signame = "SIGHUP (the terminal hung up)" if ending == "hangup" else "SIGTERM (asked to stop)"
    assert f"{signame}: stopping the engine, hanging up 2 call(s)" in log
    assert "ERROR" not in log and "Traceback" not in log, log
    if ending == "sigterm":  # the terminal is still there: the app gave it back as it found it
        assert b"\x1b[?1049l" in term.output[-200:]  # out of the alternate screen

