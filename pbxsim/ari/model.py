"""What the ARI resources share: the channel record, the id source, the typed request and reply of
a handler, and the error a handler raises for an HTTP error status."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

from pbxsim.media import Bridge, CallerMedia, ExternalMediaEndpoint, Playback, SnoopMedia

ASTERISK_ID = "00:00:00:00:00:01"
CAUSE_NORMAL = 16
CAUSE_APP_HANGUP = 32  # ChannelHangupRequest of an app's DELETE: always 32 with soft (BEHAVIOUR.md)
# What an ExternalMedia channel shows as its dialplan application outside Stasis (chan_rtp dials it).
EXTERNAL_MEDIA_APP = ("AppDial2", "(Outgoing Line)")


def ari_time(t: float | None = None) -> str:
    d = datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}+0000"


class AriHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AriRequest:
    """One ARI operation's input, validated against api-docs before a handler sees it."""

    path: Mapping[str, str]  # path parameters, e.g. channelId
    query: Mapping[str, str]
    body: Any = None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # JSON; None with 204


NO_CONTENT = Reply(204)
Handler = Callable[[AriRequest], "Reply | Awaitable[Reply]"]


class IdSource:
    """Unique ids as Asterisk makes them (start time, then a sequence number), for channels,
    bridges and playbacks alike."""

    def __init__(self) -> None:
        self.started = time.time()
        self._seq = 0

    def new(self) -> str:
        self._seq += 1
        return f"{int(self.started)}.{self._seq}"


@dataclass(eq=False, kw_only=True)
class SimChannel:
    id: str
    name: str
    kind: str  # "caller", "external", "person" (originated: someone brought into a call) or "snoop"
    media: CallerMedia | ExternalMediaEndpoint | SnoopMedia
    state: str = "Ring"
    caller_number: str = ""
    caller_name: str = ""
    app: str | None = None
    app_args: list[str] = field(default_factory=list)
    in_stasis: bool = False
    vars: dict[str, str] = field(default_factory=dict)
    bridge: Bridge | None = None
    created: float = field(default_factory=time.time)
    channel_playbacks: list[Playback] = field(default_factory=list)
    context: str = ""  # where in the dialplan the channel is (for a caller: its Stasis() step)
    exten: str = "s"
    priority: int = 1
    # Apps that get the channel's events outside Stasis (applications/{app}/subscription; the app
    # that originated a channel keeps getting them).
    subscribed: set[str] = field(default_factory=set)
    # The dialplan application it ran last, shown while it is not in Stasis (as Asterisk does: a
    # caller's StasisEnd still shows Stasis(); ExternalMedia shows AppDial2 before and after).
    dialplan_app: tuple[str, str] = ("", "")

    def leave_stasis(self) -> None:
        self.dialplan_app = ("Stasis", ",".join([self.app or "", *self.app_args]))
        self.in_stasis = False

    def to_json(self, with_vars: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "protocol_id": "",
            "name": self.name,
            "state": self.state,
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": "Stasis" if self.in_stasis else self.dialplan_app[0],
                "app_data": ",".join([self.app or "", *self.app_args]) if self.in_stasis else self.dialplan_app[1],
            },
            "creationtime": ari_time(self.created),
            "language": "en",
        }
        if with_vars:
            d["channelvars"] = dict(self.vars)
        return d


class ChannelTable:
    """The live channels by id (a channel leaves it when it is destroyed)."""

    def __init__(self) -> None:
        self.by_id: dict[str, SimChannel] = {}

    def get(self, cid: str, status: int = 404) -> SimChannel:
        """The channel, or the ARI error ``status`` (404; 400 where the id is a query parameter)."""
        ch = self.by_id.get(cid)
        if ch is None:
            raise AriHttpError(status, "Channel not found")
        return ch

    def live(self, ch: SimChannel) -> bool:
        return self.by_id.get(ch.id) is ch

    def id_of_media(self, media: object) -> str:
        for ch in self.by_id.values():
            if ch.media is media:
                return ch.id
        return ""

    def in_bridge(self, b: Bridge) -> list[SimChannel]:
        return [c for c in self.by_id.values() if c.bridge is b]


class CallObserver:
    """What the simulated callers (pbxsim/callers.py) hear of their channels from the ARI side,
    for their reports; the default does nothing."""

    def answered(self, ch: SimChannel) -> None: ...

    def left_stasis(self, ch: SimChannel, how: str) -> None: ...

    def transferred(self, ch: SimChannel, where: str) -> None: ...

    def bridged(self, callers: list[SimChannel], external: SimChannel, bridge: Bridge) -> None: ...

    def destroyed(self, ch: SimChannel, by: str, cause: int) -> None: ...


class BridgeTable:
    """The live bridges by id, and the app that gets each one's events (that of the first
    channel to join it; "" until then)."""

    def __init__(self, channels: ChannelTable) -> None:
        self.channels = channels
        self.by_id: dict[str, Bridge] = {}
        self.app: dict[str, str] = {}

    def get(self, bid: str) -> Bridge:
        b = self.by_id.get(bid)
        if b is None:
            raise AriHttpError(404, "Bridge not found")
        return b

    def to_json(self, b: Bridge) -> dict[str, Any]:
        return {
            "id": b.id,
            "technology": b.technology,
            "bridge_type": b.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": b.name,
            "channels": [self.channels.id_of_media(m) for m in b.members],
            "video_mode": "talker",
            "creationtime": ari_time(b.created),
        }
