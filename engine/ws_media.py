"""WebSocket media: chan_websocket (Asterisk 22), the call's audio on a WebSocket.

TO BE BUILT (issue 51): connection_type server (the engine connects to Asterisk's /media/ID) and
client (Asterisk connects to the engine), the control messages (MEDIA_START, XOFF/XON, HANGUP...),
the formats it allows.
"""

from __future__ import annotations

from engine.ari.client import AriClient
from engine.ari.models import Channel
from engine.config import AppConfig, Transport
from engine.media import MediaLink
from engine.transports import MediaSetupError, TransportStatus
from runtime.clock import Clock


class WebSocketTransport:
    name: Transport = "websocket"

    def __init__(self, config: AppConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def open(self, ari: AriClient, channel_id: str, app: str, token: str) -> tuple[Channel, MediaLink]:
        raise MediaSetupError("the WebSocket transport is not built yet")

    def status(self) -> TransportStatus:
        return TransportStatus(name=self.name, listening="", running=self._running)
