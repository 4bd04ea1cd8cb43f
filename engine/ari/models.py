"""Typed ARI resources and events (the subset the engine reads), after api-docs/*.json.

Fields the engine does not read are ignored, so newer Asterisk versions that add fields parse.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from providers.redact import clean_text

# Caller ID, the dialled extension, Stasis arguments and channel names are the remote party's to
# choose: here, where they enter, each is bounded and stripped of what could forge a log line or
# drive the operator's terminal (control characters, newlines, ESC), of lone surrogates that a
# database refuses, and of bidirectional overrides that make text read other than it is.
NUMBER_MAX = 64  # the history's caller_number and dialled columns
NAME_MAX = 128
ARGS_MAX = 16  # Stasis arguments kept
APP_DATA_MAX = 512


def _bounded(limit: int) -> AfterValidator:
    return AfterValidator(lambda v: clean_text(v, limit))


Number = Annotated[str, _bounded(NUMBER_MAX)]
Name = Annotated[str, _bounded(NAME_MAX)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CallerID(_Model):
    name: Name = ""
    number: Number = ""


class DialplanCEP(_Model):
    context: Name = ""
    exten: Number = ""
    priority: int = 0
    app_name: Name = ""
    app_data: Annotated[str, _bounded(APP_DATA_MAX)] = ""


class Channel(_Model):
    id: str  # Asterisk's (or the engine's own): the handle for every request about the channel
    name: Name = ""  # the driver's, e.g. PJSIP/<endpoint>-<n>: may carry what the caller sent
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
    args: Annotated[list[Name], AfterValidator(lambda v: v[:ARGS_MAX])] = []
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


class Dial(_Event):
    """A dial's progress: an originated channel (``peer``) ringing, answered, busy (``dialstatus``
    RINGING, ANSWER, BUSY, NOANSWER, CONGESTION, CHANUNAVAIL; "" as it starts)."""

    type: Literal["Dial"]
    dialstatus: str = ""
    peer: Channel


class ApplicationReplaced(_Event):
    type: Literal["ApplicationReplaced"]


class CallBroadcast(_Event):
    """StasisBroadcast() offers a call to every app (or those its filter matches): the first to
    claim it (POST /events/claim) gets it, as if the dialplan had run Stasis(that app)."""

    type: Literal["CallBroadcast"]
    channel: Channel
    caller: Number = ""
    called: Number = ""


AriEvent = Annotated[
    StasisStart
    | StasisEnd
    | ChannelHangupRequest
    | ChannelDestroyed
    | PlaybackStarted
    | PlaybackFinished
    | ChannelDtmfReceived
    | ChannelDialplan
    | Dial
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
        "Dial",
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
