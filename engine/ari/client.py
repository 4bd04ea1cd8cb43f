"""ARI REST client on aiohttp: Basic auth, typed results, errors that say what failed."""

from __future__ import annotations

import base64
import logging
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from engine.ari.models import AsteriskInfo, Bridge, Channel, Playback, Variable
from engine.config import AsteriskConfig

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class AriError(Exception):
    """Asterisk answered with an error status."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path} -> {status} {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class AriBadReply(AriError):
    """Asterisk (or something in its place) answered 2xx with a body that is not what ARI sends."""


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

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None, json: Any = None, reply: bool = True) -> Any:
        """The decoded JSON reply; ``reply=False``: the body is not needed and not read."""
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self.session.request(method, self.base_url + path, params=query, json=json) as resp:
                if resp.status >= 400:
                    raise AriError(method, path, resp.status, await _error_message(resp))
                if not reply or resp.status == 204 or resp.content_length == 0:
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError as e:
                    raise AriBadReply(method, path, resp.status, f"reply is not JSON: {e}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
            raise AriUnavailable(f"{method} {path}: {e.__class__.__name__}: {e}") from e

    async def fetch(self, model: type[M], method: str, path: str, params: dict[str, Any] | None = None) -> M:
        """One resource, validated: a reply of the wrong shape is an AriBadReply."""
        data = await self.request(method, path, params)
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise AriBadReply(method, path, 200, f"reply is not a {model.__name__}: {e.error_count()} error(s), first: {e.errors()[0]['msg']}") from None

    async def fetch_list(self, model: type[M], path: str) -> list[M]:
        data = await self.request("GET", path)
        if not isinstance(data, list):
            raise AriBadReply("GET", path, 200, f"reply is a {type(data).__name__}, not a list")
        try:
            return [model.model_validate(x) for x in data]
        except ValidationError as e:
            raise AriBadReply("GET", path, 200, f"reply is not a list of {model.__name__}: {e.errors()[0]['msg']}") from None

    # -- asterisk
    async def info(self) -> AsteriskInfo:
        return await self.fetch(AsteriskInfo, "GET", "/asterisk/info")

    # -- channels
    async def list_channels(self) -> list[Channel]:
        return await self.fetch_list(Channel, "/channels")

    async def get_channel(self, channel_id: str) -> Channel:
        return await self.fetch(Channel, "GET", f"/channels/{channel_id}")

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer", reply=False)

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        await self.request("DELETE", f"/channels/{channel_id}", {"reason": reason}, reply=False)

    async def continue_in_dialplan(self, channel_id: str, context: str | None = None, extension: str | None = None, priority: int | None = None) -> None:
        """Out of Stasis into the dialplan: at ``extension@context`` (a transfer), or with no target
        at the step after Stasis()."""
        params = {"context": context, "extension": extension, "priority": priority}
        await self.request("POST", f"/channels/{channel_id}/continue", params, reply=False)

    async def claim(self, channel_id: str, app: str) -> bool:
        """Claims a call StasisBroadcast() offers: True if this app got it (its StasisStart
        follows), False if another app was first or the offer is over."""
        try:
            await self.request("POST", "/events/claim", {"channelId": channel_id, "application": app}, reply=False)
        except AriError as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    async def redirect(self, channel_id: str, endpoint: str) -> None:
        """The channel driver's own transfer (SIP REFER, IAX2 transfer) to ``TECH/resource``."""
        await self.request("POST", f"/channels/{channel_id}/redirect", {"endpoint": endpoint}, reply=False)

    async def originate(
        self, channel_id: str, endpoint: str, app: str, app_args: list[str], caller_id: str = "", timeout_s: int = 30, formats: str = "ulaw",
    ) -> Channel:
        """Calls ``endpoint`` (TECH/resource; Local/EXT@CONTEXT for a dialplan extension); once it
        answers it enters Stasis(``app``, ``app_args``). The reply comes at once: a failure to reach
        it (busy, no answer in ``timeout_s``, no such extension) is a Dial event and the channel's
        ChannelDestroyed. A Local channel's other half is ``channel_id;2``."""
        params = {
            "endpoint": endpoint, "app": app, "appArgs": ",".join(app_args), "channelId": channel_id,
            "callerId": caller_id or None, "timeout": timeout_s, "formats": formats,
        }
        return await self.fetch(Channel, "POST", "/channels", params)

    async def snoop(self, channel_id: str, snoop_id: str, app: str, app_args: list[str], spy: str = "both", whisper: str = "out") -> Channel:
        """A snoop channel on ``channel_id`` into Stasis(``app``): it hears the channel's audio
        (``spy``: in, out or both) and what is sent to it is whispered into the channel
        (``whisper`` out: the channel's far end hears it)."""
        params = {"spy": spy, "whisper": whisper, "app": app, "appArgs": ",".join(app_args)}
        return await self.fetch(Channel, "POST", f"/channels/{channel_id}/snoop/{snoop_id}", params)

    async def get_variable(self, channel_id: str, name: str) -> str:
        return (await self.fetch(Variable, "GET", f"/channels/{channel_id}/variable", {"variable": name})).value

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/variable", {"variable": name, "value": value}, reply=False)

    async def external_media(self, channel_id: str, app: str, external_host: str, fmt: str, **extra: str) -> Channel:
        """``extra``: transport, encapsulation, connection_type, data, transport_data (ARI's names)."""
        params = {"channelId": channel_id, "app": app, "external_host": external_host, "format": fmt, **extra}
        return await self.fetch(Channel, "POST", "/channels/externalMedia", params)

    # -- applications
    async def subscribe(self, app: str, event_source: str) -> None:
        """Keep getting ``event_source``'s events (e.g. ``channel:ID``) after it leaves Stasis."""
        await self.request("POST", f"/applications/{app}/subscription", {"eventSource": event_source}, reply=False)

    async def unsubscribe(self, app: str, event_source: str) -> None:
        await self.request("DELETE", f"/applications/{app}/subscription", {"eventSource": event_source}, reply=False)

    # -- bridges
    async def list_bridges(self) -> list[Bridge]:
        return await self.fetch_list(Bridge, "/bridges")

    async def create_bridge(self, bridge_id: str, name: str) -> Bridge:
        return await self.fetch(Bridge, "POST", "/bridges", {"type": "mixing", "bridgeId": bridge_id, "name": name})

    async def add_channel(self, bridge_id: str, channel_id: str) -> None:
        await self.request("POST", f"/bridges/{bridge_id}/addChannel", {"channel": channel_id}, reply=False)

    async def remove_channel(self, bridge_id: str, channel_id: str) -> None:
        await self.request("POST", f"/bridges/{bridge_id}/removeChannel", {"channel": channel_id}, reply=False)

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}", reply=False)

    async def play_on_bridge(self, bridge_id: str, playback_id: str, media: str) -> Playback:
        return await self.fetch(Playback, "POST", f"/bridges/{bridge_id}/play/{playback_id}", {"media": media})

    async def play_on_channel(self, channel_id: str, playback_id: str, media: str) -> Playback:
        """Heard by that channel only (in a bridge, what the bridge would send it is replaced)."""
        return await self.fetch(Playback, "POST", f"/channels/{channel_id}/play/{playback_id}", {"media": media})

    # -- playbacks
    async def stop_playback(self, playback_id: str) -> None:
        await self.request("DELETE", f"/playbacks/{playback_id}", reply=False)

    async def control_playback(self, playback_id: str, operation: str) -> None:
        """``operation``: pause, unpause, restart, reverse or forward (409 if the playback's
        state does not take it, e.g. pausing one still queued)."""
        await self.request("POST", f"/playbacks/{playback_id}/control", {"operation": operation}, reply=False)


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
