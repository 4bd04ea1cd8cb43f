"""The headless service: run the engine until SIGINT/SIGTERM, then hang up cleanly."""

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
    try:
        engine = await runtime.start()
        summary = engine.summary()
        log.info("running headless (%s); health at %s; Ctrl-C or SIGTERM stops", runtime.describe(), summary.health_url)
        stopping = asyncio.create_task(stop.wait())
        fatal = asyncio.create_task(engine.fatal.wait())
        try:
            await asyncio.wait([stopping, fatal], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            fatal.cancel()
        if engine.fatal_error is not None:
            log.critical("exiting: %s", engine.fatal_error)
        log.info("stopping: hanging up %d call(s)", len(engine.store))
        return 1 if engine.fatal_error is not None else 0
    finally:
        await runtime.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
