"""Issue 47: a shared history on PostgreSQL whose network path dies (a TCP proxy that stops
forwarding: connections stay open and nothing answers). The engine process is stopped with
SIGTERM as systemd does: it must exit within seconds, saying what it could not write, and /health
must show the history failing while it hangs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import sqlalchemy as sa

from tests.conftest import AGENT_PASS, BIN, ROOT, free_port, get_json, sim_call, wait_until


class DeadPath:
    """A TCP proxy to ``target`` that, once ``hang()`` is called, forwards nothing more in either
    direction and closes nothing: a dead network path, as the peer sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.hung = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:  # the server is down: so is this connection
                client.close()
                continue
            self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    if not self.hung.is_set():
                        dst.shutdown(socket.SHUT_WR)  # the peer closed: passed on while the path works
                    return
                if self.hung.is_set():
                    continue  # swallowed: the path is dead
                dst.sendall(data)
            except OSError:
                return

    def hang(self) -> None:
        self.hung.set()

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            s.close()


def test_sigterm_with_the_history_database_hung_stops_the_engine_within_seconds(postgres_server, tmp_path):
    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE history_hung"))
    admin.dispose()
    pg = sa.engine.make_url(postgres_server)
    path = DeadPath((pg.host or "127.0.0.1", pg.port or 5432))
    url = f"postgresql+psycopg://aiagent@127.0.0.1:{path.port}/history_hung"
    ari_port, health_port = free_port(), free_port()
    sim = subprocess.Popen([BIN / "aiagent-sim", "serve", "--port", str(ari_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "media").mkdir()
    env = {**os.environ, "ASTERISK_ARI_PORT": str(ari_port), "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(health_port),
           "AIAGENT_MEDIA_DIR": str(tmp_path / "media"), "AIAGENT_PROVIDER": "echo", "AIAGENT_HISTORY_URL": url}
    log = (tmp_path / "engine.log").open("w+")
    eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT)
    caller = None
    health = f"http://127.0.0.1:{health_port}/health"
    try:
        wait_until(lambda: (h := get_json(health)[1])["ari_connected"] and h["history"]["opened"], 30)
        caller = sim_call(ari_port, "--wav", str(AGENT_PASS), "--hold", "30")
        wait_until(lambda: get_json(health)[1]["active_calls"] == 1)
        wait_until(lambda: get_json(health)[1]["status"] == "ok")
        path.hang()
        hung_at = time.monotonic()
        wait_until(lambda: get_json(health)[1]["status"] == "degraded")
        assert time.monotonic() - hung_at < 3.0  # the next sync (1 s), then a second without an answer
        problems = get_json(health)[1]["problems"]
        assert any("history" in p and "has not answered" in p for p in problems), problems
        eng.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert eng.wait(15) == 0
        assert time.monotonic() - stopped_at < 8.0
        log.seek(0)
        out = log.read()
        assert "not written at shutdown: lost" in out and "engine stopped" in out, out
    finally:
        path.close()
        log.close()
        for p in (caller, eng, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
