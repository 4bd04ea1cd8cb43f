from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, TypeVar

import pytest
from textual.pilot import Pilot

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
        assert await eng.wait_ari_connected(15), f"not connected to ARI: {eng.events.last_error}"
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


async def no_leftovers_on(asterisk: AsteriskInstance, timeout: float = 15.0) -> None:
    """Nothing left on the real PBX: no channel, no bridge (waits for teardowns in flight)."""
    ari = Ari(asterisk.url)
    try:
        await wait_for(lambda: leftovers(ari), timeout, interval=0.1, until=lambda left: left == ([], []),
                       what="no channel and no bridge left on Asterisk (channels, bridges)")
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


async def history_of(eng: Engine, call_id: str, timeout: float = 20.0, until: Callable[[CallRecord], bool] = lambda r: True) -> CallRecord:
    """The call's record in the engine's history, once it is written as ended (and ``until``
    holds), read as the CLI reads it: another connection to the database."""
    db = HistoryDb(database_url(eng.config))
    try:
        rec = await wait_for(lambda: asyncio.to_thread(db.get, call_id), timeout, interval=0.1,
                             until=lambda r: r is not None and r.outcome != "live" and until(r),
                             what=f"call {call_id} in the history as ended")
        assert rec is not None
        return rec
    finally:
        db.close()


# ---- waiting for a condition: the one way tests wait (a sleep then an assertion is a race on a loaded machine)
#
# Timeouts are caps, not expectations: a condition met at once costs nothing, so they are sized
# for a 2-core CI machine whose cores are busy with other work (the suite must pass under two busy
# loops). A test about how soon something happens asserts that separately, or runs on ManualClock.

T = TypeVar("T")


def described(predicate: Callable[..., object]) -> str:
    """The predicate as the test wrote it (a lambda's source line), for a failure message."""
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    if name.endswith("<lambda>"):
        with contextlib.suppress(OSError, TypeError):
            return " ".join(inspect.getsource(predicate).split())
    return name


def _timed_out(what: str, timeout: float, last: object, error: BaseException | None) -> AssertionError:
    seen = f"last value {last!r}" if error is None else f"last attempt raised {error!r}"
    return AssertionError(f"not reached in {timeout:g} s: {what}; {seen}")


async def wait_for(predicate: Callable[[], T | Awaitable[T]], timeout: float = 20.0, interval: float = 0.02, *,
                   until: Callable[[T], object] = bool, what: str | None = None,
                   ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Calls ``predicate`` (plain, or returning an awaitable) every ``interval`` until ``until`` of
    its value is true, and returns that value. An exception in ``ignore`` counts as not yet (a
    server not listening yet). On timeout, an AssertionError says what was waited for (``what``, or
    the predicate's source) and the last value seen."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignore as e:
            error = e
        else:
            last, error = value, None
            if until(value):
                return value
        if loop.time() > end:
            raise _timed_out(what or described(predicate), timeout, last, error)
        await asyncio.sleep(interval)


async def until(pilot: Pilot, predicate: Callable[[], object], timeout: float = 20.0, *, what: str | None = None) -> None:
    """``wait_for`` inside a Textual test: between checks the pilot lets the app process its
    messages and refresh, so a predicate on a widget sees what the app has drawn."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not (last := predicate()):
        if loop.time() > end:
            raise _timed_out(what or described(predicate), timeout, last, None)
        await pilot.pause(0.1)


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, *,
               until: Callable[[T], object] = bool, what: str | None = None,
               ignore: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """``wait_for`` for tests without an event loop (processes driven over HTTP and files); an
    OSError (a server not listening yet) counts as not yet."""
    end = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as e:
            error = e
        else:
            last, error = value, None
            if until(value):
                return value
        if time.monotonic() > end:
            raise _timed_out(what or described(predicate), timeout, last, error)
        time.sleep(interval)


# ---- the commands as an operator runs them (engines and simulators as processes)

BIN = Path(sys.executable).parent


def get_json(url: str) -> tuple[int, Any]:
    """An HTTP GET's status and JSON body (an error status's body too)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sim_call(ari_port: int, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``aiagent-sim call`` against the simulator, as an operator types it."""
    return subprocess.Popen([BIN / "aiagent-sim", "call", "--ari", f"http://127.0.0.1:{ari_port}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)
