from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

from engine.config import AppConfig, load_config
from engine.engine import Engine
from engine.history import CallRecord, HistoryDb, database_url
from pbxsim.asterisk import Ari, AsteriskCallers, AsteriskInstance, AsteriskNotFound, leftovers, shared_asterisk
from pbxsim.postgres import PostgresCluster, PostgresNotFound
from pbxsim.server import SimPBX

ROOT = Path(__file__).resolve().parent.parent

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
HELLO = SOUNDS / "hello-world.wav"  # 1.4 s
THANKS = SOUNDS / "demo-thanks.wav"  # 5.5 s
AGENT_PASS = SOUNDS / "agent-pass.wav"  # 3.3 s


def pytest_collection_modifyitems(config, items):
    if not HELLO.exists():
        raise pytest.UsageError(f"{HELLO} is missing: run scripts/setup.sh (installs asterisk-core-sounds-en-wav)")
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.fixturenames.append("awaits_named_before_the_timeout")


# When pytest-timeout's timer started for a test, and its limit (as it resolved them: the ini, --timeout,
# the marker, PYTEST_TIMEOUT).
_TIMER = pytest.StashKey[tuple[float, float]]()


def pytest_timeout_set_timer(item, settings):
    item.stash[_TIMER] = (time.monotonic(), float(settings.timeout))
    # None: pytest-timeout's own implementation still sets its timer.


@pytest.fixture
async def awaits_named_before_the_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """pytest-timeout prints the threads' stacks, and an async test that hangs shows only its event
    loop's poll there. Shortly before the timeout, every task's await is logged (shown with the
    failure, as the test's INFO log is). Timed from pytest-timeout's own start: the fixtures set up
    before this one (servers started) count against the limit too."""
    started, limit = request.node.stash.get(_TIMER, (0.0, 0.0))
    if limit <= 0:
        yield
        return
    warn_at = started + limit - min(5.0, limit * 0.1)
    handle = asyncio.get_running_loop().call_later(max(0.0, warn_at - time.monotonic()), _log_awaits)
    try:
        yield
    finally:
        handle.cancel()


def _log_awaits() -> None:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    logging.getLogger("tests.timeout").warning("about to time out; the tasks await:\n%s", out.getvalue())


def stop_processes(*procs: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM to each process still running (an engine stops its calls as under systemd), then
    SIGKILL to any not gone within ``timeout``."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    for p in running:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_config(pbx: SimPBX | AsteriskInstance, tmp_path: Path, **env: str) -> AppConfig:
    base = {
        "RTP_PORT": "0",
        "HEALTH_PORT": "0",
        "AIAGENT_MEDIA_DIR": str(tmp_path / "media"),
    }
    if isinstance(pbx, AsteriskInstance):
        base.update({"ASTERISK_ARI_PORT": str(pbx.http_port), "ASTERISK_ARI_USERNAME": "ari", "ASTERISK_ARI_PASSWORD": "ari"})
    else:
        base["ASTERISK_ARI_PORT"] = str(pbx.port)
    base.update(env)
    cfg = load_config(None, env=base)
    cfg.asterisk.reconnect_initial_s = 0.05
    cfg.asterisk.reconnect_max_s = 0.5
    return cfg


@contextlib.asynccontextmanager
async def running_engine(pbx: SimPBX | AsteriskInstance, tmp_path: Path, configure: Callable[[AppConfig], None] | None = None, **env: str) -> AsyncIterator[Engine]:
    """An engine connected to ``pbx``, stopped (calls hung up) on exit."""
    (tmp_path / "media").mkdir(exist_ok=True)
    cfg = engine_config(pbx, tmp_path, **env)
    if configure is not None:
        configure(cfg)
    eng = Engine(cfg)
    await eng.start()
    try:
        assert await eng.wait_ari_connected(5)
        yield eng
    finally:
        await eng.stop()


@pytest.fixture
async def pbx() -> AsyncIterator[SimPBX]:
    sim = SimPBX()
    await sim.start(port=0)
    yield sim
    await sim.stop()
    assert sim.violations == [], "ARI schema violations:\n" + "\n".join(sim.violations)


@pytest.fixture
def downstream_mode() -> str:
    """The engine fixture's playback mode; tests override it with @pytest.mark.parametrize."""
    return "file"


@pytest.fixture
async def engine(pbx: SimPBX, tmp_path: Path, downstream_mode: str) -> AsyncIterator[Engine]:
    async with running_engine(pbx, tmp_path, AIAGENT_DOWNSTREAM_MODE=downstream_mode) as eng:
        yield eng


@pytest.fixture(scope="session")
def asterisk() -> Iterator[AsteriskInstance]:
    """A real Asterisk 22 (../shared/asterisk/'s prebuilt tree, pbxsim/asterisk_etc/'s dialplan) on
    loopback with free ports, for the whole session. Without it: a failure in CI, a skip elsewhere."""
    try:
        shared = shared_asterisk(ROOT)
    except AsteriskNotFound as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    inst = AsteriskInstance(shared, Path(tempfile.mkdtemp(prefix="aiagent-asterisk-")))
    inst.start()
    try:
        yield inst
    finally:
        inst.stop()
        shutil.rmtree(inst.run_dir, ignore_errors=True)


@pytest.fixture
async def callers(asterisk: AsteriskInstance) -> AsyncIterator[AsteriskCallers]:
    """Callers on the real Asterisk; after the test, the PBX must hold no channel and no bridge."""
    if not asterisk.pid:
        asterisk.start()  # a test stopped it and failed before starting it again
    c = AsteriskCallers(asterisk)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()
        await no_leftovers_on(asterisk)


async def no_leftovers_on(asterisk: AsteriskInstance, timeout: float = 8.0) -> None:
    """Nothing left on the real PBX: no channel, no bridge (waits for teardowns in flight)."""
    ari = Ari(asterisk.url)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            left = await leftovers(ari)
            if left == ([], []):
                return
            if loop.time() > end:
                raise AssertionError(f"left on Asterisk: channels {left[0]}, bridges {left[1]}")
            await asyncio.sleep(0.1)
    finally:
        await ari.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server (Debian's package), in a throwaway cluster on a free port, for the
    whole session (pbxsim/postgres.py, which the benchmarks use too); yields its URL for
    SQLAlchemy. Each test that uses it gets a database of its own (``history_url``)."""
    try:
        cluster = PostgresCluster()
    except PostgresNotFound as e:
        pytest.fail(str(e))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


_databases = 0


@pytest.fixture(params=["sqlite", "postgresql"])
def history_url(request, tmp_path) -> str:
    """A fresh, empty history database: a SQLite file, or a database on the real PostgreSQL server."""
    global _databases
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    _databases += 1
    name = f"history{_databases}"
    import sqlalchemy as sa

    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return f"{server}/{name}"


async def history_of(eng: Engine, call_id: str, timeout: float = 10.0, until: Callable[[CallRecord], bool] = lambda r: True) -> CallRecord:
    """The call's record in the engine's history, once it is written as ended (and ``until``
    holds), read as the CLI reads it: another connection to the database."""
    db = HistoryDb(database_url(eng.config))
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            rec = await asyncio.to_thread(db.get, call_id)
            if rec is not None and rec.outcome != "live" and until(rec):
                return rec
            if loop.time() > end:
                raise AssertionError(f"call {call_id} not in the history as ended: {rec}")
            await asyncio.sleep(0.1)
    finally:
        db.close()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
