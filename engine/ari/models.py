"""Typed ARI resources and events (the subset the engine reads), after api-docs/*.json.

Fields the engine does not read are ignored, so newer Asterisk versions that add fields parse.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CallerID(_Model):
    name: str = ""
    number: str = ""


class DialplanCEP(_Model):
    context: str = ""
    exten: str = ""
    priority: int = 0
    app_name: str = ""
    app_data: str = ""


class Channel(_Model):
    id: str
    name: str = ""
    state: str = ""
    caller: CallerID = CallerID()
    dialplan: DialplanCEP = DialplanCEP()
    creationtime: str = ""
    channelvars: dict[str, Any] | None = None

    def in_stasis_app(self, app: str) -> bool:
        """True when the dialplan sent this channel to Stasis(app, ...)."""
        return self.dialplan.app_name.lower() == "stasis" and self.dialplan.app_data.split(",")[0].strip() == app


class Bridge(_Model):
    id: str
    technology: str = ""
    bridge_type: str = ""
    bridge_class: str = ""
    creator: str = ""
    name: str = ""
    channels: list[str] = []


class Playback(_Model):
    id: str
    media_uri: str = ""
    target_uri: str = ""
    state: str = ""


class Variable(_Model):
    value: str


class AsteriskInfo(_Model):
    system: dict[str, Any] | None = None
    build: dict[str, Any] | None = None

    @property
    def version(self) -> str:
        return str((self.system or {}).get("version", "unknown"))


# ---- events -------------------------------------------------------------------------------


class _Event(_Model):
    application: str = ""
    timestamp: str = ""


class StasisStart(_Event):
    type: Literal["StasisStart"]
    args: list[str] = []
    channel: Channel


class StasisEnd(_Event):
    type: Literal["StasisEnd"]
    channel: Channel


class ChannelHangupRequest(_Event):
    type: Literal["ChannelHangupRequest"]
    cause: int | None = None
    channel: Channel


class ChannelDestroyed(_Event):
    type: Literal["ChannelDestroyed"]
    cause: int = 0
    cause_txt: str = ""
    channel: Channel


class PlaybackStarted(_Event):
    type: Literal["PlaybackStarted"]
    playback: Playback


class PlaybackFinished(_Event):
    type: Literal["PlaybackFinished"]
    playback: Playback


class ChannelDtmfReceived(_Event):
    type: Literal["ChannelDtmfReceived"]
    digit: str
    duration_ms: int = 0
    channel: Channel


class ChannelDialplan(_Event):
    """A channel moved on in the dialplan (after a transfer, seen only by a subscribed app)."""

    type: Literal["ChannelDialplan"]
    dialplan_app: str = ""
    dialplan_app_data: str = ""
    channel: Channel


class ApplicationReplaced(_Event):
    type: Literal["ApplicationReplaced"]


class CallBroadcast(_Event):
    """StasisBroadcast() offers a call to every app (or those its filter matches): the first to
    claim it (POST /events/claim) gets it, as if the dialplan had run Stasis(that app)."""

    type: Literal["CallBroadcast"]
    channel: Channel
    caller: str = ""
    called: str = ""


AriEvent = Annotated[
    StasisStart
    | StasisEnd
    | ChannelHangupRequest
    | ChannelDestroyed
    | PlaybackStarted
    | PlaybackFinished
    | ChannelDtmfReceived
    | ChannelDialplan
    | ApplicationReplaced
    | CallBroadcast,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[AriEvent] = TypeAdapter(AriEvent)
KNOWN_EVENT_TYPES = frozenset(
    {
        "StasisStart",
        "StasisEnd",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "PlaybackStarted",
        "PlaybackFinished",
        "ChannelDtmfReceived",
        "ChannelDialplan",
        "ApplicationReplaced",
        "CallBroadcast",
    }
)


class EventParseError(ValueError):
    pass


def parse_event(data: Any) -> AriEvent | None:
    """A typed event, or None for the many event types the engine does not use. Anything that is
    not an object with a string ``type`` raises EventParseError."""
    if not isinstance(data, dict):
        raise EventParseError(f"event is a JSON {type(data).__name__}, not an object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise EventParseError(f"event type is {type(kind).__name__}, not a string")
    if kind not in KNOWN_EVENT_TYPES:
        return None
    try:
        return _EVENT_ADAPTER.validate_python(data)
    except ValidationError as e:
        raise EventParseError(f"malformed {data.get('type')} event: {e}") from None
