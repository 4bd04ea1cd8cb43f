"""How Asterisk hands a call's audio to the engine: one ``MediaTransport`` per kind, chosen per
call (``AppConfig.transport_for``), each making the call's media channel over ARI and the
``MediaLink`` that carries its audio. Everything past the link (VAD, barge-in, pacing, recording,
the panes) is the same on each.

- rtp: ExternalMedia over UDP (engine/rtp_server.py);
- audiosocket: AudioSocket over TCP, as an ExternalMedia channel or the dialplan's AudioSocket()
  (engine/audiosocket.py);
- websocket: chan_websocket's media WebSocket (engine/ws_media.py).
"""

from __future__ import annotations

from typing import Protocol

from engine.ari.client import AriClient
from engine.ari.models import Channel
from engine.config import AppConfig, Transport
from engine.media import MediaLink
from engine.rtp_server import RtpServer
from engine.status import TransportStatus as TransportStatus  # here for the transports that import it from this module


class MediaSetupError(Exception):
    """The call's media path could not be made (said in the call's log; the call ends)."""


class MediaTransport(Protocol):
    name: Transport

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    @property
    def running(self) -> bool: ...

    async def open(self, ari: AriClient, channel_id: str, app: str, token: str) -> tuple[Channel, MediaLink]:
        """Makes the call's media channel in Asterisk with ``channel_id`` (it enters ``app``) and
        the link that carries its audio. On failure the link's own resources are released; the
        channel, if made, is call control's to delete."""
        ...

    def status(self) -> TransportStatus: ...


class RtpTransport:
    """ExternalMedia over UDP: Asterisk's address for the call comes back in the channel's
    UNICASTRTP_LOCAL_ADDRESS/PORT; one socket serves every call."""

    name: Transport = "rtp"

    def __init__(self, config: AppConfig, server: RtpServer) -> None:
        self.config = config
        self.server = server

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def external_host(self) -> str:
        rtp = self.config.rtp
        return f"{rtp.advertise_host or rtp.host}:{self.server.port}"

    async def open(self, ari: AriClient, channel_id: str, app: str, token: str) -> tuple[Channel, MediaLink]:
        ext = await ari.external_media(channel_id, app, self.external_host, self.config.rtp.format)
        vars_ = ext.channelvars or {}
        addr = vars_.get("UNICASTRTP_LOCAL_ADDRESS")
        port = vars_.get("UNICASTRTP_LOCAL_PORT")
        if not addr or not port:
            addr = await ari.get_variable(ext.id, "UNICASTRTP_LOCAL_ADDRESS")
            port = await ari.get_variable(ext.id, "UNICASTRTP_LOCAL_PORT")
        return ext, self.server.link((str(addr), int(port)))

    def status(self) -> TransportStatus:
        c = self.server.counters
        return TransportStatus(
            name="rtp", listening=f"{self.server.host}:{self.server.port}/udp", running=self.running,
            connections=len(self.server.routes), messages_in=c.packets_in, messages_out=c.packets_out,
            malformed=sum(c.malformed.values()), unknown=c.foreign,
        )


class Transports:
    """The engine's transports by name; the composition root starts and stops them."""

    def __init__(self, transports: list[MediaTransport]) -> None:
        self.by_name: dict[str, MediaTransport] = {t.name: t for t in transports}

    def __getitem__(self, name: str) -> MediaTransport:
        return self.by_name[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.by_name.values())

    def status(self) -> tuple[TransportStatus, ...]:
        return tuple(t.status() for t in self.by_name.values())
