"""The headless service: run the engine until SIGINT/SIGTERM, then hang up cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiagent_tui.demo import demo_calls, start_simulator
from engine.config import AppConfig
from engine.engine import Engine

log = logging.getLogger(__name__)


async def run_headless(config: AppConfig, sim: bool = False, demo_interval_s: float = 8.0) -> int:
    """``sim``: also run the PBX simulator in this process, and place demo calls into it."""
    pbx = None
    demo: asyncio.Task | None = None
    if sim:
        pbx = await start_simulator(config)
    engine = Engine(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await engine.start()
    except Exception:
        if pbx is not None:
            await pbx.stop()
        raise
    if pbx is not None:
        demo = asyncio.create_task(demo_calls(pbx, engine, config.asterisk.app, demo_interval_s))
    log.info("running headless; health at http://%s:%d/health; Ctrl-C or SIGTERM stops", config.health.host, engine.health_server.port)
    stopping = asyncio.create_task(stop.wait())
    fatal = asyncio.create_task(engine.fatal.wait())
    try:
        await asyncio.wait([stopping, fatal], return_when=asyncio.FIRST_COMPLETED)
        if engine.fatal_error is not None:
            log.critical("exiting: %s", engine.fatal_error)
        log.info("stopping: hanging up %d call(s)", len(engine.store))
    finally:
        stopping.cancel()
        fatal.cancel()
        if demo is not None:
            demo.cancel()
        await engine.stop()
        if pbx is not None:
            await pbx.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    # Non-zero when the engine could not go on, so that systemd (Restart=on-failure) restarts it.
    return 1 if engine.fatal_error is not None else 0
