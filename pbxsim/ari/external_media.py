"""ARI's POST /channels/externalMedia: an RTP endpoint on a port of the PBX's range, as a channel
that enters Stasis about 1 ms after the reply (BEHAVIOUR.md)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from typing import Protocol

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import EXTERNAL_MEDIA_APP, AriHttpError, AriRequest, ChannelTable, IdSource, Reply, SimChannel
from pbxsim.faults import Faults
from pbxsim.media import ExternalMediaEndpoint, MediaClock
from pbxsim.ws_media import WsMediaEndpoint, WsMediaServer
from media.ws_media import FRAME_BYTES

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


class ChannelHangup(Protocol):
    """Channels.hangup: ``request`` False for a channel that ends with no ChannelHangupRequest (an
    AudioSocket channel whose connection ended: measured on Asterisk 22)."""

    def __call__(self, ch: SimChannel, by: str, request: bool = True) -> None: ...


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
        # Hangs a channel up as the PBX does (pbxsim/ari/channels.py Channels.hangup): a stream
        # channel whose connection ends goes with it. Set by the server once both exist.
        self.hangup_channel: ChannelHangup | None = None
        self.websockets = WsMediaServer()  # chan_websocket's /media/<connection id> (pbxsim/ws_media.py)

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
        """chan_audiosocket's ExternalMedia channel (pbxsim/audiosocket.py): it connects during the
        request, and sends its UUID when called, just before it enters Stasis."""
        from pbxsim.audiosocket import AudioSocketEndpoint

        q = req.query
        uid = q.get("data", "")
        if not uid:
            raise AriHttpError(400, "data can not be empty")
        fmt = q.get("format", "")
        if fmt not in ("slin", "slin16"):
            raise AriHttpError(400, f"format {fmt} is not simulated for AudioSocket (slin and slin16 are)")
        host = q.get("external_host", "")
        rhost, _, rport = host.rpartition(":")
        if not rhost or not rport.isdigit():
            raise AriHttpError(400, "external_host must be <host>:<port> for all transports other than websocket")
        try:
            uuid.UUID(uid)
        except ValueError:
            raise AriHttpError(500, "An internal error prevented this request from being handled") from None  # "Failed to parse UUID"
        cid = q.get("channelId") or self.ids.new()
        if cid in self.channels.by_id:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        ep = AudioSocketEndpoint((rhost, int(rport)), uid, fmt, self.clock)
        try:
            await ep.connect()
        except (OSError, TimeoutError) as e:
            log.warning("AudioSocket connection to '%s' failed: %s", host, e)
            raise AriHttpError(500, "An internal error prevented this request from being handled") from None
        ch = SimChannel(
            id=cid, name=f"AudioSocket/{host}-{uid}", kind="external", media=ep, state="Down", app=q["app"],
            app_args=[uid], subscribed={q["app"]}, context="default", dialplan_app=EXTERNAL_MEDIA_APP,
        )
        ch.vars["AUDIOSOCKET_UUID"] = uid
        ch.vars["AUDIOSOCKET_SERVICE"] = host
        ep.hangup_channel = lambda how: self._audiosocket_ended(ch, how)
        self.channels.by_id[cid] = ch
        self.endpoints[cid] = ep
        loop = asyncio.get_running_loop()
        loop.call_later(0.001, self._call_audiosocket, ch, ep)
        return Reply(200, ch.to_json(with_vars=True))

    def _call_audiosocket(self, ch: SimChannel, ep: ExternalMediaEndpoint) -> None:
        from pbxsim.audiosocket import AudioSocketEndpoint

        if ch.id in self.channels.by_id and isinstance(ep, AudioSocketEndpoint):
            ep.call()
            self._enter_stasis(ch)

    def _audiosocket_ended(self, ch: SimChannel, how: str) -> None:
        """The engine closed the socket or sent a hangup: the channel's read fails, it hangs up."""
        if ch.id in self.channels.by_id and self.hangup_channel is not None:
            asyncio.get_running_loop().call_soon(lambda: self.hangup_channel and self.hangup_channel(ch, "audiosocket", request=False))

    async def create_websocket(self, req: AriRequest) -> Reply:
        """chan_websocket's ExternalMedia channel (pbxsim/ws_media.py), server mode: the app connects
        to /media/<MEDIA_WEBSOCKET_CONNECTION_ID>; the channel answers and enters Stasis then."""
        q = req.query
        if q.get("encapsulation", "rtp") != "none":
            raise AriHttpError(400, "encapsulation must be 'none' for websocket transport")
        if q.get("connection_type", "client") != "server":
            # The simulator has no websocket_client.conf: no connection id is valid.
            raise AriHttpError(400, "external_host must be a valid websocket_client connection id.")
        fmt = q.get("format", "")
        if fmt not in FRAME_BYTES or fmt == "alaw":
            raise AriHttpError(400, f"format {fmt} is not simulated for WebSocket media (ulaw, slin and slin16 are)")
        cid = q.get("channelId") or self.ids.new()
        if cid in self.channels.by_id:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        ep = self.websockets.new(fmt, self.clock)
        ch = SimChannel(
            id=cid, name=ep.channel_name, kind="external", media=ep, state="Down", app=q["app"],
            subscribed={q["app"]}, context="default", dialplan_app=EXTERNAL_MEDIA_APP,
        )
        ch.vars["MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"] = str(ep.frame_bytes)
        ch.vars["MEDIA_WEBSOCKET_CONNECTION_ID"] = ep.connection_id
        ep.channel = ch
        loop = asyncio.get_running_loop()
        ep.on_connect = lambda e: loop.call_later(0.001, self._enter_stasis, ch)

        def hang_up(e: WsMediaEndpoint, cause: int) -> None:
            if ch.id in self.channels.by_id and self.hangup_channel is not None:
                loop.call_soon(self.hangup_channel, ch, "websocket")

        ep.hang_up = hang_up
        self.channels.by_id[cid] = ch
        self.endpoints[cid] = ep
        return Reply(200, ch.to_json(with_vars=True))

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
        if isinstance(ep, WsMediaEndpoint):
            self.websockets.forget(ep)
        ep.close()

    def close(self) -> None:
        for ep in self.endpoints.values():
            ep.close()
