"""The headless service: run the engine until SIGINT/SIGTERM, then hang up cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from engine.config import AppConfig
from engine.engine import Engine

log = logging.getLogger(__name__)


async def run_headless(config: AppConfig) -> int:
    engine = Engine(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    log.info("running headless; health at http://%s:%d/health; Ctrl-C or SIGTERM stops", config.health.host, engine.health_server.port)
    try:
        await stop.wait()
        log.info("stopping: hanging up %d call(s)", len(engine.store))
    finally:
        await engine.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
