"""The console socket (engine/console.py) against a careless or hostile client of the socket: bodies
that are not a JSON object, connections that never finish a request. The engine answers, logs
little, and holds nothing for long."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import aiohttp

from engine.console import ConsoleServer
from tests.conftest import running_engine

BAD_BODIES = [b"[1, 2]", b"null", b"42", b'"echo"', b"not json", b"\xff\xfe", b"", b"[" * 100000]


def socket_path() -> Path:
    # A short path: a Unix socket's name has room for about 100 bytes, pytest's tmp_path may not.
    return Path(tempfile.mkdtemp(prefix="aiagent-console-")) / "engine.sock"


async def test_bodies_that_are_not_a_json_object_get_400_and_one_log_line(pbx, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_engine(pbx, tmp_path) as eng:
        console = ConsoleServer(eng, socket_path())
        await console.start()
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(console.path))) as http:
                answers = []
                for i in range(204):
                    path = "/provider" if i % 2 else f"/calls/{eng.store.calls_total}/transfer"
                    async with http.post(f"http://console{path}", data=BAD_BODIES[i // 2 % len(BAD_BODIES)]) as r:
                        answers.append((path, r.status, await r.json() if r.status == 400 else None))
                # /calls/N/transfer of a call that is not there: 404 before the body is read.
                provider = [a for a in answers if a[0] == "/provider"]
                assert {status for _, status, _ in provider} == {400}, provider[:3]
                errors = {body["error"] for _, _, body in provider}
                assert "the body is an array, not a JSON object" in errors and any(e.startswith("the body is not JSON") for e in errors), errors
                # The console still works.
                async with http.post("http://console/provider", json={"name": "echo"}) as r:
                    assert r.status == 200 and (await r.json())["ok"] is True
                async with http.get("http://console/view") as r:
                    assert r.status == 200
        finally:
            await console.stop()
    assert console.bad_requests == len(provider)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and "console: bad request POST /provider" in loud[0].getMessage(), [r.getMessage() for r in loud]
    assert not any(r.exc_info for r in caplog.records)


async def test_connections_that_never_finish_a_request_are_closed(pbx, tmp_path):
    async with running_engine(pbx, tmp_path) as eng:
        console = ConsoleServer(eng, socket_path(), idle_timeout_s=0.5)
        await console.start()
        try:
            conns = [await asyncio.open_unix_connection(str(console.path)) for _ in range(200)]
            for i, (_, writer) in enumerate(conns):
                if i % 2:  # half of them start a request and never finish its headers
                    writer.write(b"GET /view HTTP/1.1\r\nHost: console\r\n")
                    await writer.drain()

            async def closed_by_the_engine(reader: asyncio.StreamReader) -> bytes:
                return await reader.read()  # b"" at EOF: the engine closed it

            ends = await asyncio.wait_for(asyncio.gather(*(closed_by_the_engine(r) for r, _ in conns)), 10)
            assert ends == [b""] * 200
            for _, writer in conns:
                writer.close()
            # An attached console polling /view goes on being served.
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(console.path))) as http:
                for _ in range(3):
                    async with http.get("http://console/view") as r:
                        assert r.status == 200
        finally:
            await console.stop()
