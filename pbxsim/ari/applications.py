"""ARI applications (list, get, subscribe to a channel's events) and asterisk (info, ping)."""

from __future__ import annotations

from typing import Any

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import ASTERISK_ID, AriHttpError, AriRequest, BridgeTable, ChannelTable, Handler, IdSource, Reply, SimChannel, ari_time


class Applications:
    def __init__(self, *, events: EventBus, channels: ChannelTable, bridges: BridgeTable, ids: IdSource) -> None:
        self.events = events
        self.channels = channels
        self.bridges = bridges
        self.ids = ids  # its start time is Asterisk's startup time

    def handlers(self) -> dict[str, Handler]:
        return {
            "asterisk.getInfo": self.info,
            "asterisk.ping": lambda req: Reply(200, {"asterisk_id": ASTERISK_ID, "ping": "pong", "timestamp": ari_time()}),
            "applications.list": lambda req: Reply(200, [self._json(a) for a in self.events.sockets]),
            "applications.get": self.get,
            "applications.subscribe": self.subscribe,
            "applications.unsubscribe": self.unsubscribe,
        }

    def info(self, req: AriRequest) -> Reply:
        started = ari_time(self.ids.started)
        return Reply(200, {
            "system": {"version": "22.10.1 (aiagent-sim)", "entity_id": ASTERISK_ID},
            "build": {"os": "Linux", "kernel": "sim", "options": "", "machine": "x86_64", "date": "2026-01-01", "user": "sim"},
            "status": {"startup_time": started, "last_reload_time": started},
            "config": {"name": "aiagent-sim", "default_language": "en", "setid": {"user": "asterisk", "group": "asterisk"}},
        })

    def get(self, req: AriRequest) -> Reply:
        if req.path["applicationName"] not in self.events.sockets:
            raise AriHttpError(404, "Application not found")
        return Reply(200, self._json(req.path["applicationName"]))

    def _event_source(self, req: AriRequest) -> tuple[str, SimChannel]:
        app = req.path["applicationName"]
        if app not in self.events.sockets:
            raise AriHttpError(404, "Application not found")
        kind, _, cid = req.query["eventSource"].partition(":")
        if kind != "channel":
            raise AriHttpError(400, "only channel: event sources are simulated")
        ch = self.channels.by_id.get(cid)
        if ch is None:
            raise AriHttpError(422, "Event source does not exist")
        return app, ch

    def subscribe(self, req: AriRequest) -> Reply:
        app, ch = self._event_source(req)
        ch.subscribed.add(app)
        return Reply(200, self._json(app))

    def unsubscribe(self, req: AriRequest) -> Reply:
        app, ch = self._event_source(req)
        if app not in ch.subscribed:
            raise AriHttpError(409, "Application not subscribed to event source")
        ch.subscribed.discard(app)
        return Reply(200, self._json(app))

    def _json(self, app: str) -> dict[str, Any]:
        chans = [c.id for c in self.channels.by_id.values() if c.app == app and c.in_stasis]
        bridges = [b for b, a in self.bridges.app.items() if a == app]
        return {"name": app, "channel_ids": chans, "bridge_ids": bridges, "endpoint_ids": [], "device_names": [], "events_allowed": [], "events_disallowed": []}
