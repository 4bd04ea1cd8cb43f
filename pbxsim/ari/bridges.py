"""ARI bridges: create, destroy, add and remove channels, play to the bridge. The mixing itself is
pbxsim.media.Bridge's, ticked by the media clock."""

from __future__ import annotations

import asyncio
import random

from media.frames import FRAME_S

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import NO_CONTENT, AriHttpError, AriRequest, BridgeTable, CallObserver, ChannelTable, Handler, IdSource, Reply, SimChannel
from pbxsim.ari.playbacks import Playbacks
from pbxsim.media import Bridge, MediaClock


class Bridges:
    def __init__(
        self,
        *,
        table: BridgeTable,
        channels: ChannelTable,
        events: EventBus,
        playbacks: Playbacks,
        clock: MediaClock,
        ids: IdSource,
        rng: random.Random,
        calls: CallObserver,
    ) -> None:
        self.table = table
        self.channels = channels
        self.events = events
        self.playbacks = playbacks
        self.clock = clock
        self.ids = ids
        self.rng = rng  # seeds each bridge's echo timing (see BridgePlayer)
        self.calls = calls

    def handlers(self) -> dict[str, Handler]:
        return {
            "bridges.list": self.list,
            "bridges.get": self.get,
            "bridges.create": lambda req: self._create(req.query.get("bridgeId") or self.ids.new(), req),
            "bridges.createWithId": lambda req: self._create(req.path["bridgeId"], req),
            "bridges.destroy": self.destroy,
            "bridges.addChannel": self.add_channel,
            "bridges.removeChannel": self.remove_channel,
            "bridges.play": lambda req: self._play(req, req.query.get("playbackId") or self.ids.new()),
            "bridges.playWithId": lambda req: self._play(req, req.path["playbackId"]),
        }

    def list(self, req: AriRequest) -> Reply:
        return Reply(200, [self.table.to_json(b) for b in self.table.by_id.values()])

    def get(self, req: AriRequest) -> Reply:
        return Reply(200, self.table.to_json(self.table.get(req.path["bridgeId"])))

    def _create(self, bid: str, req: AriRequest) -> Reply:
        if bid in self.table.by_id:
            raise AriHttpError(409, "Bridge with this ID already exists")
        kind = req.query.get("type", "mixing").split(",")[0]
        b = Bridge(bid, req.query.get("name", ""), kind, self.playbacks.event, random.Random(self.rng.random()))
        self.table.by_id[bid] = b
        self.clock.bridges[bid] = b
        self.table.app[bid] = ""  # its events go to the app of the channels that join it
        return Reply(200, self.table.to_json(b))

    def destroy(self, req: AriRequest) -> Reply:
        b = self.table.get(req.path["bridgeId"])
        for ch in self.channels.in_bridge(b):
            self.leave(ch)
        self.playbacks.fail_on_bridge(b)
        del self.table.by_id[b.id]
        self.clock.bridges.pop(b.id, None)
        self.events.emit(self.table.app.pop(b.id, None) or None, {"type": "BridgeDestroyed", "bridge": self.table.to_json(b)})
        return NO_CONTENT

    def add_channel(self, req: AriRequest) -> Reply:
        b = self.table.get(req.path["bridgeId"])
        chans = [self.channels.get(c, status=400) for c in req.query["channel"].split(",")]
        for ch in chans:
            if not ch.in_stasis:
                raise AriHttpError(422, "Channel not in Stasis application")
            if ch.bridge is not None and ch.bridge is not b:
                raise AriHttpError(409, "Channel is already in a bridge")
        for ch in chans:
            if ch.bridge is b:
                self.leave(ch)  # added again: Asterisk takes it out and puts it back
            ch.bridge = b
            ch.media.bridge = b
            b.add(ch.media)
            if not self.table.app.get(b.id):
                self.table.app[b.id] = ch.app or ""
            self.events.emit(ch.app, {"type": "ChannelEnteredBridge", "bridge": self.table.to_json(b), "channel": ch.to_json()})
        members = self.channels.in_bridge(b)
        exts = [c for c in members if c.kind == "external"]
        if exts:
            self.calls.bridged([c for c in members if c.kind == "caller"], exts[0], b)
        return NO_CONTENT

    async def remove_channel(self, req: AriRequest) -> Reply:
        b = self.table.get(req.path["bridgeId"])
        chans = []
        for cid in req.query["channel"].split(","):
            ch = self.channels.get(cid, status=400)
            if ch.bridge is not b:
                raise AriHttpError(422, "Channel not in this bridge")
            chans.append(ch)
        # Measured (BEHAVIOUR.md, "Channel commands queue behind a caller-channel playback"): the
        # reply waits until a playback on the channel ends; a tone never ends by itself.
        while any(pb.state in ("playing", "paused") for ch in chans for pb in ch.channel_playbacks):
            await asyncio.sleep(FRAME_S)
        for ch in chans:
            if ch.bridge is b:
                self.leave(ch)
        return NO_CONTENT

    def _play(self, req: AriRequest, pid: str) -> Reply:
        return self.playbacks.play_on_bridge(self.table.get(req.path["bridgeId"]), pid, req.query["media"])

    def leave(self, ch: SimChannel) -> None:
        """The channel leaves its bridge (if in one): ChannelLeftBridge to its app."""
        b = ch.bridge
        if b is None:
            return
        technology = b.technology  # the event shows the bridge as it was before this change
        b.remove(ch.media)
        ch.bridge = None
        ch.media.bridge = None
        self.events.emit(ch.app, {"type": "ChannelLeftBridge", "bridge": {**self.table.to_json(b), "technology": technology}, "channel": ch.to_json()})
        if not b.members:
            # The bridge's playbacks had only its announcer left to play to.
            self.playbacks.fail_on_bridge(b)
            b.player.stopped()
