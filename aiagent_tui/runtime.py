"""The composition root: the one place that starts the optional simulated PBX, the engine and the
demo caller, and stops them in reverse order. The terminal app, ``--no-ui`` and ``--sim`` all
run through it."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from engine.config import AppConfig, ConfigError, reload_config
from engine.console import ConsoleServer, console_socket
from engine.engine import Engine, EngineStartError
from engine.status import ReloadResult
from pbxsim.demo import demo_calls
from pbxsim.server import SimPBX

log = logging.getLogger(__name__)


class Runtime:
    ends_calls = True  # the engine lives and dies with the app (or the service)

    def __init__(self, config: AppConfig, sim: bool = False, demo_interval_s: float | None = 8.0, config_path: str | Path | None = None) -> None:
        self.config = config
        # What a reload reads (with the environment, as at start); None: no file. Absolute: the
        # file the engine started from, wherever the process's working directory is later.
        self.config_path = Path(config_path).absolute() if config_path is not None else None
        self.sim = sim
        self.demo_interval_s = demo_interval_s
        self.engine: Engine | None = None
        self.console: ConsoleServer | None = None
        self.pbx: SimPBX | None = None
        self._demo: asyncio.Task[None] | None = None

    async def start(self) -> Engine:
        """Simulator (with ``sim``), then the engine, then the demo caller. Raises EngineStartError
        with what to fix; whatever had started is stopped again."""
        try:
            if self.sim:
                self.pbx = await self._start_simulator()
            engine = self.engine = Engine(self.config)
            await engine.start()
            self.console = await self._start_console(engine)
        except BaseException:
            await self.stop()
            raise
        # What startup made (modules, config, the providers' Python side) lives as long as the
        # engine: out of the collector's passes, so that a full collection walks only the calls'
        # objects and holds the loop, and every call's audio, for less (bench/media_load.py at 250
        # calls: longest pass 82 -> 20 ms). Garbage is collected first: frozen, it would never be
        # (an earlier engine's calls in this process, with their resamplers: see stop()).
        gc.collect()
        gc.freeze()
        if self.pbx is not None and self.demo_interval_s is not None:  # None: no demo caller (tests place their own)
            self._demo = asyncio.create_task(
                demo_calls(self.pbx, self.config.asterisk.app, self.demo_interval_s, lambda: engine.ari_connected), name="demo-calls",
            )
            self._demo.add_done_callback(_demo_done)
        return engine

    async def _start_console(self, engine: Engine) -> ConsoleServer:
        """The socket ``aiagent-tui attach`` connects to."""
        path = console_socket(self.config.asterisk.app, self.config.console.socket)
        console = ConsoleServer(engine, path, self.reload)
        try:
            await console.start()
        except OSError as e:
            raise EngineStartError(
                f"cannot serve the console socket {path}: {e.strerror or e}; "
                "set console.socket (AIAGENT_CONSOLE_SOCKET), or give each engine its own asterisk.app"
            ) from None
        return console

    async def _start_simulator(self) -> SimPBX:
        """The simulated PBX, on the port the engine's ARI settings point at."""
        cfg = self.config.asterisk
        pbx = SimPBX(username=cfg.ari_username, password=cfg.ari_password.get_secret_value())
        try:
            await pbx.start(host=cfg.host, port=cfg.ari_port)
        except OSError as e:
            await pbx.stop()
            raise EngineStartError(
                f"cannot start the simulated PBX on {cfg.host}:{cfg.ari_port}/tcp: {e.strerror or e} "
                "(is Asterisk running there?); set asterisk.ari_port (ASTERISK_ARI_PORT) to a free port"
            ) from None
        return pbx

    async def stop(self) -> None:
        """Demo caller, console, engine (hangs every call up), simulator: each once, in that order."""
        if self._demo is not None:
            self._demo.cancel()
            await asyncio.gather(self._demo, return_exceptions=True)
            self._demo = None
        if self.console is not None:
            console, self.console = self.console, None
            await console.stop()
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.stop()
        if self.pbx is not None:
            pbx, self.pbx = self.pbx, None
            await pbx.stop()
        # The engine is gone: what start() froze goes back to the collector, so that the exit's
        # collection frees it and whatever it still holds. A frozen cycle never is: soxr's
        # resamplers in it (nanobind objects) outlive the interpreter and each one is printed as
        # "nanobind: leaked ..." on the operator's terminal at quit.
        gc.unfreeze()

    async def reload(self) -> ReloadResult:
        """Reads the config file again and hands it to the engine (SIGHUP, the console's R). A file
        that does not load or would not work is refused whole: the running config stays."""
        engine = self.engine
        if engine is None:
            raise RuntimeError("the engine is not running")
        if self.config_path is None:
            return engine.reload_refused("the engine was started without a config file: there is nothing to read again")
        try:
            result = await engine.reload(*reload_config(self.config_path))
        except ConfigError as e:
            return engine.reload_refused(str(e))
        self.config = engine.config
        return result

    def describe(self) -> str:
        if self.pbx is not None:
            return f"simulated PBX on port {self.pbx.port}"
        return f"ARI {self.config.asterisk.base_url}"


def _demo_done(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("demo caller stopped: %s", e, exc_info=e)
