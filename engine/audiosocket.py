"""AudioSocket: Asterisk's TCP media (chan_audiosocket, app_audiosocket), served by the engine.

TO BE BUILT (issue 51): the engine's TCP server, the message framing (media/audiosocket.py), the
call matched by the UUID Asterisk sends first, both forms (ExternalMedia channel, dialplan
AudioSocket() on a Local channel).
"""

from __future__ import annotations

from engine.ari.client import AriClient
from engine.ari.models import Channel
from engine.config import AppConfig, Transport
from engine.media import MediaLink
from engine.transports import MediaSetupError, TransportStatus
from runtime.clock import Clock


class AudioSocketTransport:
    name: Transport = "audiosocket"

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
        raise MediaSetupError("the AudioSocket transport is not built yet")

    def status(self) -> TransportStatus:
        return TransportStatus(name=self.name, listening="", running=self._running)
