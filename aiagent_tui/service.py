"""The headless service: run the engine until SIGINT/SIGTERM, then hang up cleanly; SIGHUP
reloads the config file (systemctl reload)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiagent_tui.runtime import Runtime

log = logging.getLogger(__name__)


async def run_headless(runtime: Runtime) -> int:
    """Runs until a signal or a fatal engine error; non-zero when the engine could not go on, so
    that systemd (Restart=on-failure) restarts it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        if runtime.engine is None or reloads:  # not up yet, or one under way: that one reads the file
            return
        task = asyncio.create_task(_reload(runtime), name="config-reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        engine = await runtime.start()
        summary = engine.summary()
        log.info("running headless (%s); health at %s; Ctrl-C or SIGTERM stops, SIGHUP reloads the config", runtime.describe(), summary.health_url)
        stopping = asyncio.create_task(stop.wait())
        fatal = asyncio.create_task(engine.fatal.wait())
        try:
            await asyncio.wait([stopping, fatal], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            fatal.cancel()
        log.info("stopping: hanging up %d call(s)", len(engine.store))
        return engine.fatal_exit_code if engine.fatal_error is not None else 0
    finally:
        for task in reloads:
            task.cancel()
        await runtime.stop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _reload(runtime: Runtime) -> None:
    # The engine logs what it applied or why it refused; here only what nobody else would see.
    try:
        await runtime.reload()
    except Exception as e:
        log.exception("config reload failed: %s", e)
