"""Item 4 of the fault probe: HTTP load must not stall the audio. /health and /metrics are served
by their own process; these tests check the behaviour that makes that hold (figures: bench/faults.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import aiohttp

from tests.conftest import running_engine, wait_for


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_a_burst_of_requests_costs_the_engine_one_render_per_window(pbx, tmp_path):
    async with running_engine(pbx, tmp_path) as eng:
        url = f"http://127.0.0.1:{eng.health_server.port}"
        assert eng.health_server.pid not in (None, os.getpid())
        renders = eng.health_server.renders
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def one(path: str) -> int:
                async with http.get(url + path) as r:
                    await r.read()
                    return r.status

            t0 = time.monotonic()
            statuses = await asyncio.gather(*(one("/health" if i % 2 else "/metrics") for i in range(400)))
            elapsed = time.monotonic() - t0
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 200
        windows = int(elapsed / eng.health_server.max_age_s) + 2  # a burst straddles window edges
        assert eng.health_server.renders - renders <= 2 * windows, (eng.health_server.renders - renders, elapsed)
        assert eng.health_server.renders - renders < 20  # not one per request


async def test_the_http_process_is_restarted_when_it_dies(pbx, tmp_path):
    async with running_engine(pbx, tmp_path) as eng:
        url = f"http://127.0.0.1:{eng.health_server.port}/health"
        await wait_for(lambda: eng.health_server.pid is not None)
        first = eng.health_server.pid
        status, _ = await asyncio.to_thread(get, url)
        assert status == 200
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: eng.health_server.pid not in (None, first))
        status, body = await asyncio.to_thread(get, url)
        assert status == 200, body
        comp = next(c for c in eng.components() if c.name == "health-http")
        assert comp.restarts == 1 and comp.last_error is not None and "exited with status -9" in comp.last_error


async def test_a_stuck_engine_loop_shows_as_stuck_not_as_a_hung_request(pbx, tmp_path):
    async with running_engine(pbx, tmp_path) as eng:
        url = f"http://127.0.0.1:{eng.health_server.port}/health"
        assert eng.health_server.renders == 0  # no body rendered yet: none cached to answer with
        result: list[tuple[int, bytes]] = []
        t = threading.Thread(target=lambda: result.append(get(url)))
        t.start()
        # The engine's loop is blocked (nothing on it runs) until the request is answered without it.
        t.join(30)
        assert result, "the request was not answered while the engine's loop was blocked"
        status, body = result[0]
        assert status == 503 and b"stuck" in body
