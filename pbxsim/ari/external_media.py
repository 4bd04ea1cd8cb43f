"""ARI's POST /channels/externalMedia: an RTP endpoint on a port of the PBX's range, as a channel
that enters Stasis about 1 ms after the reply (BEHAVIOUR.md)."""

from __future__ import annotations

import asyncio
import logging
import random

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import EXTERNAL_MEDIA_APP, AriHttpError, AriRequest, ChannelTable, IdSource, Reply, SimChannel
from pbxsim.faults import Faults
from pbxsim.media import ExternalMediaEndpoint, MediaClock

log = logging.getLogger("pbxsim")


class RtpPorts:
    """The PBX's RTP port range (even ports, as Asterisk takes them)."""

    def __init__(self, *, host: str, start: int, end: int) -> None:
        self.host = host
        self.start = start
        self.end = end
        self.used: set[int] = set()
        self.exhaustion_events = 0

    async def open(self, ep: ExternalMediaEndpoint) -> int:
        for port in range(self.start, self.end + 1, 2):
            if port in self.used:
                continue
            try:
                await ep.open(self.host, port)
            except OSError:
                continue
            self.used.add(port)
            return port
        # A real Asterisk 22.10.1 segfaults here (BEHAVIOUR.md); the simulator says so instead.
        self.exhaustion_events += 1
        log.error("RTP port range %d-%d exhausted: a real Asterisk 22.10.1 would crash now", self.start, self.end)
        raise AriHttpError(500, "RTP port range exhausted (Asterisk 22.10.1 crashes here)")


class ExternalMedia:
    def __init__(
        self, *, channels: ChannelTable, events: EventBus, ports: RtpPorts, clock: MediaClock, faults: Faults, ids: IdSource
    ) -> None:
        self.channels = channels
        self.events = events
        self.ports = ports
        self.clock = clock
        self.faults = faults
        self.ids = ids
        # Channel id -> endpoint, kept after the channel ends (a call's report reads its counters).
        self.endpoints: dict[str, ExternalMediaEndpoint] = {}

    async def create(self, req: AriRequest) -> Reply:
        q = req.query
        transport = q.get("transport", "udp")
        if transport == "tcp" and q.get("encapsulation") == "audiosocket":
            return await self.create_audiosocket(req)
        if transport == "websocket":
            return await self.create_websocket(req)
        if q.get("encapsulation", "rtp") != "rtp" or transport != "udp":
            raise AriHttpError(400, f"transport {transport} with encapsulation {q.get('encapsulation', 'rtp')} is not simulated")
        return await self.create_rtp(req)

    async def create_audiosocket(self, req: AriRequest) -> Reply:
        """chan_audiosocket's ExternalMedia channel (pbxsim/audiosocket.py)."""
        raise AriHttpError(400, "AudioSocket is not simulated yet")

    async def create_websocket(self, req: AriRequest) -> Reply:
        """chan_websocket's ExternalMedia channel (pbxsim/ws_media.py)."""
        raise AriHttpError(400, "WebSocket media is not simulated yet")

    async def create_rtp(self, req: AriRequest) -> Reply:
        q = req.query
        if q["format"] != "ulaw":
            raise AriHttpError(400, f"format {q['format']} is not simulated (ulaw is)")
        host = q.get("external_host")
        if not host or ":" not in host:
            raise AriHttpError(400, "external_host must be host:port")
        rhost, _, rport = host.rpartition(":")
        cid = q.get("channelId") or self.ids.new()
        if cid in self.channels.by_id:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        ep = ExternalMediaEndpoint((rhost, int(rport)), self.clock, loss_every=self.faults.rtp_loss_every)
        port = await self.ports.open(ep)
        # The app that originated it keeps getting its events after Stasis (BEHAVIOUR.md).
        # Down in the reply, Up at its StasisStart; named after chan_rtp's object address.
        ch = SimChannel(
            id=cid, name=f"UnicastRTP/{host}-0x7f{random.getrandbits(40):010x}", kind="external", media=ep, state="Down", app=q["app"],
            subscribed={q["app"]}, context="default", dialplan_app=EXTERNAL_MEDIA_APP,
        )
        ch.vars["UNICASTRTP_LOCAL_ADDRESS"] = self.ports.host
        ch.vars["UNICASTRTP_LOCAL_PORT"] = str(port)
        self.channels.by_id[cid] = ch
        self.endpoints[cid] = ep
        # The response goes out about 1 ms before the channel is in Stasis (BEHAVIOUR.md).
        asyncio.get_running_loop().call_later(0.001, self._enter_stasis, ch)
        return Reply(200, ch.to_json(with_vars=True))

    def _enter_stasis(self, ch: SimChannel) -> None:
        if ch.id in self.channels.by_id:
            ch.state = "Up"
            ch.in_stasis = True
            self.events.emit(ch.app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})

    def release(self, ep: ExternalMediaEndpoint) -> None:
        """Its channel ended: the port goes back to the range."""
        if ep.local:
            self.ports.used.discard(ep.local[1])
        ep.close()

    def close(self) -> None:
        for ep in self.endpoints.values():
            ep.close()
