"""ARI REST client on aiohttp: Basic auth, typed results, errors that say what failed."""

from __future__ import annotations

import base64
import logging
from typing import Any

import aiohttp

from engine.ari.models import AsteriskInfo, Bridge, Channel, Playback, Variable
from engine.config import AsteriskConfig

log = logging.getLogger(__name__)


class AriError(Exception):
    """Asterisk answered with an error status."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path} -> {status} {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class AriUnavailable(Exception):
    """Asterisk could not be reached (connection refused, reset, timeout)."""


class AriClient:
    def __init__(self, config: AsteriskConfig) -> None:
        self.config = config
        self.base_url = config.base_url
        creds = f"{config.ari_username}:{config.ari_password.get_secret_value()}".encode()
        self._headers = {"Authorization": "Basic " + base64.b64encode(creds).decode()}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None, json: Any = None) -> Any:
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self.session.request(method, self.base_url + path, params=query, json=json) as resp:
                if resp.status >= 400:
                    raise AriError(method, path, resp.status, await _error_message(resp))
                if resp.status == 204 or resp.content_length == 0:
                    return None
                return await resp.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            raise AriUnavailable(f"{method} {path}: {e.__class__.__name__}: {e}") from e

    # -- asterisk
    async def info(self) -> AsteriskInfo:
        return AsteriskInfo.model_validate(await self.request("GET", "/asterisk/info"))

    # -- channels
    async def list_channels(self) -> list[Channel]:
        return [Channel.model_validate(c) for c in await self.request("GET", "/channels")]

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        await self.request("DELETE", f"/channels/{channel_id}", {"reason": reason})

    async def continue_in_dialplan(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/continue")

    async def get_variable(self, channel_id: str, name: str) -> str:
        data = await self.request("GET", f"/channels/{channel_id}/variable", {"variable": name})
        return Variable.model_validate(data).value

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value})

    async def external_media(self, channel_id: str, app: str, external_host: str, fmt: str) -> Channel:
        data = await self.request(
            "POST",
            "/channels/externalMedia",
            {"channelId": channel_id, "app": app, "external_host": external_host, "format": fmt},
        )
        return Channel.model_validate(data)

    # -- bridges
    async def list_bridges(self) -> list[Bridge]:
        return [Bridge.model_validate(b) for b in await self.request("GET", "/bridges")]

    async def create_bridge(self, bridge_id: str, name: str) -> Bridge:
        data = await self.request("POST", "/bridges", {"type": "mixing", "bridgeId": bridge_id, "name": name})
        return Bridge.model_validate(data)

    async def add_channel(self, bridge_id: str, channel_id: str) -> None:
        await self.request("POST", f"/bridges/{bridge_id}/addChannel", {"channel": channel_id})

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}")

    async def play_on_bridge(self, bridge_id: str, playback_id: str, media: str) -> Playback:
        data = await self.request("POST", f"/bridges/{bridge_id}/play/{playback_id}", {"media": media})
        return Playback.model_validate(data)

    # -- playbacks
    async def stop_playback(self, playback_id: str) -> None:
        await self.request("DELETE", f"/playbacks/{playback_id}")


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    try:
        body = await resp.json(content_type=None)
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])
    except Exception:
        pass
    return (await resp.text())[:200] or resp.reason or ""
