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

from dataclasses import dataclass
from typing import Protocol

from engine.ari.client import AriClient
from engine.ari.models import Channel
from engine.config import AppConfig, Transport
from engine.media import MediaLink
from engine.rtp_server import RtpServer
from engine.status import TransportStatus as TransportStatus  # here for the transports that import it from this module


@dataclass(slots=True, kw_only=True)
class StreamCounters:
    """A stream transport's (AudioSocket, WebSocket) server-wide counters, as /health shows them."""

    connections_total: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    malformed: int = 0
    oversize: int = 0
    unknown: int = 0
    cut: int = 0
    slow_reader: int = 0
    dtmf: int = 0  # DTMF messages (a Stasis call takes its keys from ARI's ChannelDtmfReceived)

    def status(self, name: str, listening: str, running: bool, connections: int) -> TransportStatus:
        return TransportStatus(
            name=name, listening=listening, running=running, connections=connections, connections_total=self.connections_total,
            messages_in=self.messages_in, messages_out=self.messages_out, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
            malformed=self.malformed, oversize=self.oversize, unknown=self.unknown, cut=self.cut, slow_reader=self.slow_reader,
        )


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
