"""The commands as an operator runs them: aiagent-sim serve, aiagent-tui --no-ui, aiagent-sim call."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request

import pytest

from tests.conftest import AGENT_PASS, BIN, HELLO, THANKS, ROOT, free_port, get_json, sim_call, stop_processes, wait_until

@pytest.fixture
def stack(tmp_path):
    ari_port, health_port, rtp_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    sim = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(ari_port), "--rtp-start", "22000", "--rtp-end", "22200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {
        **os.environ,
        "ASTERISK_ARI_PORT": str(ari_port),
        "RTP_PORT": str(rtp_port),
        "HEALTH_PORT": str(health_port),
        "AIAGENT_MEDIA_DIR": str(tmp_path / "media"),
    }
    (tmp_path / "media").mkdir()
    # Its own process group, as a service's or a terminal's job: a signal can go to the whole group.
    eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--no-ui"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    health = f"http://127.0.0.1:{health_port}/health"
    try:
        wait_until(lambda: get_json(health)[1]["ari_connected"])
        yield ari_port, health_port, eng, sim
    finally:
        stop_processes(eng, sim)


def test_sim_call_command_reports_clean_echo_calls(stack, tmp_path):
    ari_port, health_port, eng, sim = stack
    report = tmp_path / "report.json"
    r = subprocess.run(
        [BIN / "aiagent-sim", "call", "--ari", f"http://127.0.0.1:{ari_port}", "--count", "3", "--wav", str(AGENT_PASS), "--hold", "1.5", "--report", str(report)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(report.read_text())
    assert data["leftover_channels"] == 0 and data["leftover_bridges"] == 0
    assert data["schema_violations"] == []
    assert len(data["calls"]) == 3
    for c in data["calls"]:
        assert c["answered"] and c["bridged"] and c["external_media"] and c["hangup_clean"]
        # The shipped config sends the agent's audio as RTP (stream mode), never as bridge files.
        assert c["rtp_sent"] > 150 and c["rtp_received"] > 150
        assert c["agent_audio_seconds"] > 3.0
    status, health = get_json(f"http://127.0.0.1:{health_port}/health")
    assert status == 200 and health["calls_total"] == 3 and health["active_calls"] == 0
    assert health["audio_transport"] == "externalmedia" and health["providers"]["echo"]["ready"]


@pytest.mark.parametrize("to", ["process", "group"])
def test_sigterm_hangs_up_live_calls_and_exits_zero(stack, tmp_path, to):
    """SIGTERM to the engine (``systemctl stop`` with the unit's KillMode=mixed) or to its whole
    process group (Ctrl-C in a terminal, ``timeout``, a cgroup stopped all at once): the calls are
    hung up and the engine exits 0, its HTTP process not reported as crashed on the way."""
    ari_port, health_port, eng, sim = stack
    placer = sim_call(ari_port, "--count", "2", "--wav", str(THANKS), "--hold", "10", "--report", str(tmp_path / "r.json"))
    health = f"http://127.0.0.1:{health_port}/health"
    wait_until(lambda: get_json(health)[1]["active_calls"] == 2 and all(c["rtp"]["packets_in"] > 0 for c in get_json(health)[1]["calls"]))
    if to == "group":
        os.killpg(eng.pid, signal.SIGTERM)
    else:
        eng.send_signal(signal.SIGTERM)
    assert eng.wait(15) == 0, eng.stdout.read()
    out = eng.stdout.read()
    assert "stopping: hanging up 2 call(s)" in out
    assert "Traceback" not in out and "ERROR" not in out, out
    placer.wait(30)
    data = json.loads((tmp_path / "r.json").read_text())
    assert [c["ended_by"] for c in data["calls"]] == ["ari", "ari"]
    assert data["leftover_channels"] == 0 and data["leftover_bridges"] == 0


def test_health_while_a_call_is_up(stack, tmp_path):
    ari_port, health_port, eng, sim = stack
    placer = sim_call(ari_port, "--count", "1", "--wav", str(HELLO), "--hold", "3", "--report", str(tmp_path / "r.json"))
    health = f"http://127.0.0.1:{health_port}/health"
    wait_until(lambda: get_json(health)[1]["active_calls"] == 1 and get_json(health)[1]["calls"][0]["rtp"]["packets_in"] > 40)
    status, h = get_json(health)
    assert status == 200 and h["status"] == "ok"
    assert h["ari_connected"] and h["rtp_server_running"]
    call = h["calls"][0]
    assert call["provider"] == "echo"
    assert call["rtp"]["ssrc"] is not None and call["rtp"]["lost"] == 0
    conv = h["conversation"][call["call_id"]]
    assert conv["downstream_mode"] == "stream" and conv["capture_enabled"]  # echo is full duplex: never gated
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "ai_agent_active_calls 1.0" in metrics
    assert "ai_agent_rtp_worst_loss_ratio 0.0" in metrics and "call_id" not in metrics
    placer.wait(30)


def test_no_ui_exits_nonzero_with_a_clear_message_when_the_rtp_port_is_taken(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        env = {**os.environ, "RTP_PORT": str(s.getsockname()[1]), "HEALTH_PORT": str(free_port()), "AIAGENT_MEDIA_DIR": str(tmp_path / "media")}
        r = subprocess.run([BIN / "aiagent-tui", "--no-ui"], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 1
    assert "cannot bind the RTP socket" in r.stderr and "Traceback" not in r.stderr


def test_no_ui_refuses_a_media_dir_it_cannot_write(tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    env = {**os.environ, "AIAGENT_MEDIA_DIR": str(blocker / "media"), "AIAGENT_DOWNSTREAM_MODE": "file", "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(free_port())}
    r = subprocess.run([BIN / "aiagent-tui", "--no-ui"], env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 1
    assert "storage.media_dir" in r.stderr and str(blocker / "media") in r.stderr and "Traceback" not in r.stderr


def test_sim_call_converse_waits_for_the_greeting_then_speaks(tmp_path):
    """Every caller of a --converse run follows the whole script (the tone provider has no
    greeting, so each caller's first wait times out, then it speaks and hears a beep)."""
    ari_port, health_port = free_port(), free_port()
    sim = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(ari_port), "--rtp-start", "22400", "--rtp-end", "22600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "ASTERISK_ARI_PORT": str(ari_port), "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(health_port),
           "AIAGENT_MEDIA_DIR": str(tmp_path / "media"), "AIAGENT_PROVIDER": "tone"}
    eng = subprocess.Popen([BIN / "aiagent-tui", "--no-ui"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        wait_until(lambda: get_json(f"http://127.0.0.1:{health_port}/health")[1]["ari_connected"])
        r = subprocess.run(
            [BIN / "aiagent-sim", "call", "--ari", f"http://127.0.0.1:{ari_port}", "--count", "3", "--wav", str(HELLO), "--hold", "0.2", "--converse", "--report", str(tmp_path / "r.json")],
            capture_output=True, text=True, timeout=90,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        calls = json.loads((tmp_path / "r.json").read_text())["calls"]
        assert [c["caller_frames_sent"] > 50 for c in calls] == [True, True, True]
        assert all(c["agent_audio_seconds"] >= 1.9 for c in calls)  # each heard a whole 2 s beep
    finally:
        stop_processes(eng, sim, timeout=15)


def test_without_a_config_file_the_commands_say_they_run_on_the_defaults(tmp_path):
    r = subprocess.run([BIN / "aiagent-tui", "check-config"], capture_output=True, text=True, timeout=30, cwd=tmp_path, env={**os.environ, "AIAGENT_MEDIA_DIR": str(tmp_path / "m")})
    assert r.returncode == 0 and json.loads(r.stdout)["storage"]["media_dir"] == str(tmp_path / "m")
    assert r.stderr.startswith(f"note: no config.toml in {tmp_path}: using the defaults and the environment")
    (tmp_path / "config.toml").write_text("[logging]\nlevel = 'WARNING'\n")
    r = subprocess.run([BIN / "aiagent-tui", "check-config"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["logging"]["level"] == "WARNING"


def test_doctor_finds_the_health_port_free_right_after_an_engine_on_it_stopped():
    """The health server binds with SO_REUSEADDR: a port whose connections wait in TIME_WAIT (an
    engine just stopped, a monitor had polled it) is free to the next engine, so doctor says so."""
    from aiagent_tui.doctor import _port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server's side closes first: its end waits in TIME_WAIT
    client.close()
    server.close()
    assert _port_free("127.0.0.1", port, socket.SOCK_STREAM) == (True, "")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert _port_free("127.0.0.1", taken.getsockname()[1], socket.SOCK_STREAM)[0] is False
    finally:
        taken.close()
