from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest

from engine.config import AppConfig, load_config
from engine.engine import Engine
from pbxsim.server import SimPBX

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
HELLO = SOUNDS / "hello-world.wav"  # 1.4 s
THANKS = SOUNDS / "demo-thanks.wav"  # 5.5 s
AGENT_PASS = SOUNDS / "agent-pass.wav"  # 3.3 s


def pytest_collection_modifyitems(config, items):
    if not HELLO.exists():
        raise pytest.UsageError(f"{HELLO} is missing: run scripts/setup.sh (installs asterisk-core-sounds-en-wav)")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_config(pbx: SimPBX, tmp_path: Path, **env: str) -> AppConfig:
    base = {
        "ASTERISK_ARI_PORT": str(pbx.port),
        "RTP_PORT": "0",
        "HEALTH_PORT": "0",
        "AIAGENT_MEDIA_DIR": str(tmp_path / "media"),
    }
    base.update(env)
    cfg = load_config(None, env=base)
    cfg.asterisk.reconnect_initial_s = 0.05
    cfg.asterisk.reconnect_max_s = 0.5
    return cfg


@contextlib.asynccontextmanager
async def running_engine(pbx: SimPBX, tmp_path: Path, configure: Callable[[AppConfig], None] | None = None, **env: str) -> AsyncIterator[Engine]:
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


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
