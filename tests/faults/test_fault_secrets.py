"""A model server's words and the engine's secrets: a server that reflects the API key in its 401
(as OpenAI's "Incorrect API key provided: sk-...") or the password of its URL, with escape
sequences and a forged log line after it, must not get them republished by /health (served
without authentication), the console, ``doctor`` or the log. A URL with credentials is shown
masked, and one that cannot work is refused when the config is loaded."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tempfile
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aiagent_tui.runtime import Runtime
from engine.config import ConfigError, load_config
from tests.conftest import free_port, wait_for
from tests.faults.test_fault_operator import run_cli

KEY = "sk-proj-Zq81TESTKEYdoNotPublish0042"
PASSWORD = "pw-Vault-7731"
KEY_ENV = "AIAGENT_TEST_MODEL_KEY"


class ReflectingServer:
    """An OpenAI-API model server (the fault injector) that refuses with 401 and reflects whatever
    credential it got, with terminal escapes, a forged log line and a long tail after it.
    ``models_ok``: its model list answers (the engine finds it up, so calls reach the 401s)."""

    def __init__(self) -> None:
        self.models_ok = True
        self.refused = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    def refuse(self, request: web.Request) -> web.Response:
        self.refused += 1
        auth = request.headers.get("Authorization", "")
        given = auth.removeprefix("Bearer ")
        if auth.startswith("Basic "):
            given = base64.b64decode(auth[6:]).decode().partition(":")[2]
        message = (f"Incorrect API key provided: {given}. You can find your API key at https://example.invalid/keys."
                   "\x1b[2J\x1b]0;owned\x07\n2026-01-01 00:00:00 CRITICAL engine: forged line\r\n" + "padding " * 2000)
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)

    async def models(self, request: web.Request) -> web.Response:
        if self.models_ok:
            return web.json_response({"object": "list", "data": [{"id": "m"}]})
        return self.refuse(request)

    async def other(self, request: web.Request) -> web.Response:
        await request.read()
        return self.refuse(request)

    async def __aenter__(self) -> ReflectingServer:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("*", "/v1/{tail:.*}", self.other)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def write_config(path: Path, tmp_path: Path, ari_port: int, url: str, key_env: str = KEY_ENV) -> None:
    path.write_text(f"""
[asterisk]
ari_port = {ari_port}
reconnect_initial_s = 0.05
reconnect_max_s = 0.5
[rtp]
port = 0
[health]
port = {free_port()}
[console]
socket = "{Path(tempfile.mkdtemp(prefix="aiagent-console-")) / "engine.sock"}"
[storage]
media_dir = "{tmp_path / 'media'}"
[history]
path = "{tmp_path / 'history.sqlite3'}"
[providers]
default = "remote"
fallback = "echo"
[providers.servers.llm]
api = "openai"
url = "{url}"
api_key_env = "{key_env}"
probe_interval_s = 0.2
[providers.pipelines.remote]
stt = "llm"
llm = "llm"
tts = "llm"
""")


def formatted(records: list[logging.LogRecord]) -> str:
    f = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    return "\n".join(f.format(r) for r in records)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIAGENT_", "ASTERISK_", "RTP_", "HEALTH_"))}


async def test_a_key_reflected_in_a_401_is_published_nowhere(pbx, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    (tmp_path / "media").mkdir()
    path = tmp_path / "config.toml"
    async with ReflectingServer() as server:
        write_config(path, tmp_path, pbx.port, f"http://127.0.0.1:{server.port}/v1")
        rt = Runtime(load_config(path), config_path=path)
        try:
            eng = await rt.start()
            assert await eng.wait_ari_connected(5)
            # The server is up (its model list answers): a call's greeting goes to it, and is refused.
            rec = pbx.place_call(hold_s=3.0)
            await wait_for(lambda: server.refused >= 1 and eng.stages.statuses()[0].last_error, timeout=20)
            server.models_ok = False  # and now its probe is refused too
            await wait_for(lambda: not eng.provider_readiness()["remote"].ready)
            await wait_for(rec.finished.is_set, timeout=20)
            health = json.dumps(eng.health())
            health_http = await asyncio.to_thread(_get, eng.summary().health_url)
            assert rt.console is not None
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(rt.console.path))) as http:
                async with http.get("http://console/view", params={"call": rec.id}) as r:
                    view = await r.text()
            # Still said what is wrong: a 401, and the server's words around the key.
            assert "HTTP 401" in health and "Incorrect API key provided: [redacted]" in health, health
        finally:
            await rt.stop()
        # COLUMNS: rich wraps nothing, so that a line break in the output is one the text brought.
        doctor = await asyncio.to_thread(run_cli, "--config", str(path), "doctor", cwd=tmp_path, COLUMNS="2000", **{KEY_ENV: KEY})
    assert "server llm" in doctor.stdout and "Incorrect API key provided: [redacted]" in doctor.stdout, doctor.stdout
    log = formatted(caplog.records)
    for shown, where in [(health, "/health"), (health_http, "/health over HTTP"), (view, "console view"),
                         (doctor.stdout + doctor.stderr, "doctor"), (log, "log")]:
        assert KEY not in shown and KEY[8:24] not in shown, where
        at = shown.find("\x1b")
        assert at < 0, (where, shown[max(0, at - 100):at + 20])
        assert not any(line.startswith("2026-01-01 00:00:00 CRITICAL") for line in shown.splitlines()), where  # no forged line
        assert "padding " * 100 not in shown, where  # bounded
    assert not any("\n" in r.getMessage() for r in caplog.records if r.name.startswith("providers"))


def _get(url: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


async def test_credentials_in_a_model_servers_url_are_masked_everywhere(tmp_path):
    (tmp_path / "media").mkdir()
    path = tmp_path / "config.toml"
    async with ReflectingServer() as server:
        server.models_ok = False
        write_config(path, tmp_path, free_port(), f"http://alice:{PASSWORD}@127.0.0.1:{server.port}/v1", key_env="")
        check = await asyncio.to_thread(run_cli, "--config", str(path), "check-config", cwd=tmp_path)
        doctor = await asyncio.to_thread(run_cli, "--config", str(path), "doctor", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["providers"]["servers"]["llm"]["url"] == f"http://alice:***@127.0.0.1:{server.port}/v1"
    assert server.refused >= 1  # the server got the password (Basic auth) and reflected it
    assert f"http://alice:***@127.0.0.1:{server.port}/v1" in doctor.stdout and "[redacted]" in doctor.stdout, doctor.stdout
    for out in (check, doctor):
        assert PASSWORD not in out.stdout + out.stderr


@pytest.mark.parametrize("url, key_env, expected", [
    (f"http://alice:{PASSWORD}/x@127.0.0.1:8000/v1", "", "not a usable URL"),  # a "/" in the password, not encoded
    (f"http://alice:{PASSWORD}#1@127.0.0.1:8000/v1", "", "not a usable URL"),
    ("http://127.0.0.1:99999/v1", "", "not a usable URL"),
    ("http:///v1", "", "no host"),
    (f"http://alice:{PASSWORD}@127.0.0.1:8000/v1", KEY_ENV, "url has credentials and api_key_env is set"),
])
def test_a_model_server_url_that_cannot_work_is_refused_at_load_naming_the_field(tmp_path, url, key_env, expected):
    path = tmp_path / "config.toml"
    write_config(path, tmp_path, free_port(), url, key_env=key_env)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert "providers.servers.llm" in str(e.value) and expected in str(e.value), e.value
    assert PASSWORD not in str(e.value)
    r = run_cli("--config", str(path), "check-config", cwd=tmp_path, **clean_env())
    assert r.returncode == 2 and "providers.servers.llm" in r.stderr and PASSWORD not in r.stderr + r.stdout
