"""A real PostgreSQL server (Debian's package) in a throwaway cluster on a free port, for the tests
(the ``postgres_server`` fixture) and the benchmarks (bench/faults.py), with the faults a shared
history meets: the server stopped and started again, or hung (every process of it SIGSTOPped, as
behind a dead network path: connections are accepted by the kernel and never answered)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresNotFound(RuntimeError):
    pass


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise PostgresNotFound("PostgreSQL is not installed: run scripts/setup.sh --test (Debian's postgresql package)")
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresCluster:
    """``start()`` makes the cluster and starts it; ``url`` is for SQLAlchemy (user ``aiagent``, no
    password, no database: add ``/NAME``); ``close()`` stops it and deletes its files."""

    def __init__(self) -> None:
        self.bindir = postgres_bin()
        # Not under pytest's own temporary directory: that one is private to this user.
        self.root = Path(tempfile.mkdtemp(prefix="aiagent-postgres-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        self.port = _free_port()
        self.url = f"postgresql+psycopg://aiagent@127.0.0.1:{self.port}"
        # PostgreSQL refuses to run as root: as root, the cluster belongs to the package's postgres user.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._paused = False

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Makes the cluster (the first time) and starts the server; returns once it accepts connections."""
        if not self.data.exists():
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "aiagent", "--no-sync")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (``fast``: clients disconnected, as at a planned stop; ``immediate``: as at a crash)."""
        self.resume()
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "aiagent", name)
        return f"{self.url}/{name}"

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, ...)."""
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return []
        main = int(pidfile.read_text().split()[0])
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == main]
        return [main, *children]

    def pause(self) -> None:
        """Hangs the server: every process of it stopped (SIGSTOP). Connections still open at the
        TCP level, and nothing answers."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            for pid in self.pids():
                os.kill(pid, signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _ppid(proc: Path) -> int | None:
    try:
        # The fields after the command's closing parenthesis: state, ppid, ...
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
