"""HTTP endpoints for operators and monitoring: GET /health (JSON) and GET /metrics (Prometheus).

The HTTP server runs in its own process (engine/health_process.py): a burst of requests or slow
clients there cannot hold the engine's interpreter lock or loop, where RTP is paced every 20 ms.
The engine binds the port (so a clash fails at startup, naming the setting) and hands the
socket down; it renders a body when the process asks, at most once per ``max_age_s`` per kind.
The engine's supervisor owns ``run``: a process that dies is restarted on the same socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from engine.health_process import encode_body
from engine.status import EngineStatus

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(
        self, status: Callable[[], EngineStatus], metrics: Callable[[], bytes], host: str, port: int, *,
        max_age_s: float = 0.5, max_in_flight: int = 256,
    ) -> None:
        self._status = status
        self._metrics = metrics
        self.host = host
        self.port = port
        self.max_age_s = max_age_s
        self.max_in_flight = max_in_flight
        self.renders = 0
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None

    def bind(self) -> None:
        """Raises OSError (port in use) at startup, like a plain bind."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]  # port 0 in tests: the OS picks one
        log.info("health on http://%s:%d/health, metrics on /metrics", self.host, self.port)

    async def run(self) -> None:
        """Runs the HTTP process and answers its requests for bodies, until it exits."""
        assert self._sock is not None, "bind() first"
        proc = self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.health_process", str(self._sock.fileno()), str(self.max_age_s), str(self.max_in_flight),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=(self._sock.fileno(),),
            start_new_session=True,  # see ``providers.local.workers``: the engine alone stops it
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                kind = line.strip().decode(errors="replace")
                if kind in ("health", "metrics"):
                    proc.stdin.write(self._render(kind))
        finally:
            if proc.returncode is None:
                proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
        raise RuntimeError(f"health HTTP process exited with status {await proc.wait()}")

    def _render(self, kind: str) -> bytes:
        self.renders += 1
        if kind == "metrics":
            return encode_body(kind, 200, CONTENT_TYPE_LATEST, self._metrics())
        status = self._status()
        code = 200 if status.summary.status == "ok" else 503
        return encode_body(kind, code, "application/json", json.dumps(status.as_json(), default=str).encode())

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
