"""chan_websocket's media protocol (Asterisk 22, channels/chan_websocket.c), without I/O.

Audio goes as BINARY frames in the channel's format; control goes as TEXT frames, either plain
text ("MEDIA_START connection_id:X channel:Y ...") or JSON ({"event": "MEDIA_START", ...}), as
chan_websocket.conf's control_message_format (or the dial string's f() option) says. Events come
from Asterisk; commands go to it. ``parse_event``/``format_event`` and ``parse_command``/
``format_command`` are exact inverses of what chan_websocket writes and reads, so that the
engine reads Asterisk and the simulator writes like it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Union

# chan_websocket.c's frame queue (frames from the app, played one per ptime): XOFF is sent when it
# reaches 900, XON when it falls below 800; at 1000 a BINARY message is ignored whole.
QUEUE_LENGTH_MAX = 1000
QUEUE_LENGTH_XOFF_LEVEL = 900
QUEUE_LENGTH_XON_LEVEL = 800
MAX_TEXT_MESSAGE_LEN = 128  # a longer TEXT message is ignored (logged) by chan_websocket

# Bytes per 20 ms (the codec's default_ms) frame: default_ms * minimum_bytes / minimum_ms.
FRAME_BYTES: dict[str, int] = {"ulaw": 160, "alaw": 160, "slin": 320, "slin16": 640}
RATES: dict[str, int] = {"ulaw": 8000, "alaw": 8000, "slin": 8000, "slin16": 16000}
PTIME_MS = 20

EVENT_NAMES = (
    "MEDIA_START", "MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED", "MEDIA_BUFFERING_COMPLETED",
    "MEDIA_MARK_PROCESSED", "DTMF_END", "STATUS", "ERROR",
)
COMMAND_NAMES = (
    "ANSWER", "HANGUP", "START_MEDIA_BUFFERING", "STOP_MEDIA_BUFFERING", "MARK_MEDIA", "FLUSH_MEDIA",
    "GET_STATUS", "REPORT_QUEUE_DRAINED", "PAUSE_MEDIA", "CONTINUE_MEDIA", "SET_MEDIA_DIRECTION",
)
MsgFormat = Literal["plain-text", "json"]


class WsMediaProtocolError(ValueError):
    """A TEXT message that is not a chan_websocket event or command."""


@dataclass(frozen=True, slots=True)
class MediaStart:
    connection_id: str
    channel: str
    channel_id: str
    format: str
    optimal_frame_size: int
    ptime: int
    channel_variables: dict[str, str] = field(default_factory=dict)  # JSON only


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """MEDIA_XOFF, MEDIA_XON or QUEUE_DRAINED: no data (JSON adds the channel id)."""

    event: Literal["MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED"]
    channel_id: str = ""


@dataclass(frozen=True, slots=True)
class Correlated:
    """MEDIA_BUFFERING_COMPLETED or MEDIA_MARK_PROCESSED, with the id the app gave."""

    event: Literal["MEDIA_BUFFERING_COMPLETED", "MEDIA_MARK_PROCESSED"]
    correlation_id: str = ""
    channel_id: str = ""


@dataclass(frozen=True, slots=True)
class DtmfEnd:
    digit: str
    channel_id: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    channel_id: str
    queue_length: int
    xon_level: int
    xoff_level: int
    queue_full: bool
    bulk_media: bool
    media_paused: bool


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error_text: str
    channel_id: str = ""


Event = Union[MediaStart, FlowEvent, Correlated, DtmfEnd, Status, ErrorEvent]


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # one of COMMAND_NAMES
    correlation_id: str | None = None  # STOP_MEDIA_BUFFERING, MARK_MEDIA
    direction: str | None = None  # SET_MEDIA_DIRECTION (JSON only)


def _bool(v: Any) -> bool:
    return v is True or v == "true"


def _plain_fields(rest: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in rest.split():
        key, sep, value = tok.partition(":")
        if not sep:
            raise WsMediaProtocolError(f"field {tok[:40]!r} is not key:value")
        out[key] = value
    return out


def _int(fields: dict[str, Any], key: str) -> int:
    try:
        return int(fields[key])
    except (KeyError, TypeError, ValueError) as e:
        raise WsMediaProtocolError(f"{key} missing or not a number") from e


def _str(fields: dict[str, Any], key: str, default: str | None = None) -> str:
    v = fields.get(key, default)
    if not isinstance(v, str):
        raise WsMediaProtocolError(f"{key} missing")
    return v


def parse_event(text: str) -> Event:
    """One TEXT message from Asterisk, in either format (JSON starts with '{')."""
    text = text.strip()
    if not text:
        raise WsMediaProtocolError("empty message")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise WsMediaProtocolError(f"bad JSON: {e}") from e
        if not isinstance(obj, dict):
            raise WsMediaProtocolError("JSON message is not an object")
        name = obj.get("event")
        fields: dict[str, Any] = obj
    else:
        name, _, rest = text.partition(" ")
        if name == "ERROR":
            # error_text is free text: the rest of the message after it.
            head, sep, error_text = rest.partition("error_text:")
            fields = {**_plain_fields(head), "error_text": error_text} if sep else _plain_fields(rest)
        elif name in ("MEDIA_BUFFERING_COMPLETED", "MEDIA_MARK_PROCESSED"):
            fields = {"correlation_id": rest.strip()}
        else:
            fields = _plain_fields(rest)
    cid = fields.get("channel_id", "")
    cid = cid if isinstance(cid, str) else ""
    if name == "MEDIA_START":
        vars_ = fields.get("channel_variables") or {}
        return MediaStart(
            connection_id=_str(fields, "connection_id"), channel=_str(fields, "channel"), channel_id=_str(fields, "channel_id"),
            format=_str(fields, "format"), optimal_frame_size=_int(fields, "optimal_frame_size"), ptime=_int(fields, "ptime"),
            channel_variables={str(k): str(v) for k, v in vars_.items()} if isinstance(vars_, dict) else {},
        )
    if name in ("MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED"):
        return FlowEvent(name, cid)
    if name in ("MEDIA_BUFFERING_COMPLETED", "MEDIA_MARK_PROCESSED"):
        return Correlated(name, _str(fields, "correlation_id", ""), cid)
    if name == "DTMF_END":
        digit = _str(fields, "digit")
        if len(digit) != 1:
            raise WsMediaProtocolError(f"DTMF_END digit {digit[:10]!r} is not one character")
        return DtmfEnd(digit, cid)
    if name == "STATUS":
        return Status(
            channel_id=cid, queue_length=_int(fields, "queue_length"), xon_level=_int(fields, "xon_level"),
            xoff_level=_int(fields, "xoff_level"), queue_full=_bool(fields.get("queue_full")),
            bulk_media=_bool(fields.get("bulk_media")), media_paused=_bool(fields.get("media_paused")),
        )
    if name == "ERROR":
        return ErrorEvent(_str(fields, "error_text", ""), cid)
    shown = name if isinstance(name, str) else repr(name)
    raise WsMediaProtocolError(f"unknown event {shown[:40]!r}")


def format_event(ev: Event, fmt: MsgFormat = "plain-text") -> str:
    """What chan_websocket writes for ``ev`` (the simulator's side)."""
    js = fmt == "json"
    if isinstance(ev, MediaStart):
        if js:
            return json.dumps({
                "event": "MEDIA_START", "connection_id": ev.connection_id, "channel": ev.channel, "channel_id": ev.channel_id,
                "format": ev.format, "optimal_frame_size": ev.optimal_frame_size, "ptime": ev.ptime,
                "channel_variables": ev.channel_variables,
            }, separators=(",", ":"))
        return (f"MEDIA_START connection_id:{ev.connection_id} channel:{ev.channel} channel_id:{ev.channel_id} "
                f"format:{ev.format} optimal_frame_size:{ev.optimal_frame_size} ptime:{ev.ptime}")
    if isinstance(ev, FlowEvent):
        return json.dumps({"event": ev.event, "channel_id": ev.channel_id}, separators=(",", ":")) if js else ev.event
    if isinstance(ev, Correlated):
        if js:
            return json.dumps({"event": ev.event, "channel_id": ev.channel_id, "correlation_id": ev.correlation_id}, separators=(",", ":"))
        return f"{ev.event} {ev.correlation_id}" if ev.correlation_id else ev.event
    if isinstance(ev, DtmfEnd):
        if js:
            return json.dumps({"event": "DTMF_END", "channel_id": ev.channel_id, "digit": ev.digit}, separators=(",", ":"))
        return f"DTMF_END digit:{ev.digit} channel_id:{ev.channel_id}"
    if isinstance(ev, Status):
        if js:
            return json.dumps({
                "event": "STATUS", "channel_id": ev.channel_id, "queue_length": ev.queue_length, "xon_level": ev.xon_level,
                "xoff_level": ev.xoff_level, "queue_full": ev.queue_full, "bulk_media": ev.bulk_media, "media_paused": ev.media_paused,
            }, separators=(",", ":"))
        tf = {True: "true", False: "false"}
        return (f"STATUS channel_id:{ev.channel_id} queue_length:{ev.queue_length} xon_level:{ev.xon_level} "
                f"xoff_level:{ev.xoff_level} queue_full:{tf[ev.queue_full]} bulk_media:{tf[ev.bulk_media]} media_paused:{tf[ev.media_paused]}")
    if js:
        return json.dumps({"event": "ERROR", "channel_id": ev.channel_id, "error_text": ev.error_text}, separators=(",", ":"))
    return f"ERROR channel_id:{ev.channel_id} error_text:{ev.error_text}"


def format_command(cmd: Command, fmt: MsgFormat = "plain-text") -> str:
    """What the app sends (the engine's side)."""
    if fmt == "json":
        obj: dict[str, str] = {"command": cmd.name}
        if cmd.correlation_id is not None:
            obj["correlation_id"] = cmd.correlation_id
        if cmd.direction is not None:
            obj["direction"] = cmd.direction
        return json.dumps(obj, separators=(",", ":"))
    return f"{cmd.name} {cmd.correlation_id}" if cmd.correlation_id else cmd.name


def parse_command(text: str, fmt: MsgFormat = "plain-text") -> Command:
    """A TEXT message from the app, as chan_websocket's handle_command reads it."""
    text = text.strip()
    if fmt == "json":
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise WsMediaProtocolError("Unable to parse JSON command") from e
        if not isinstance(obj, dict):
            raise WsMediaProtocolError("Unable to parse JSON command")
        name, corr, direction = obj.get("command"), obj.get("correlation_id"), obj.get("direction")
    else:
        name, _, data = text.partition(" ")
        corr, direction = (data or None), None
    if not isinstance(name, str) or name not in COMMAND_NAMES:
        shown = name if isinstance(name, str) else repr(name)
        raise WsMediaProtocolError(f"command {shown[:40]!r} unknown")
    return Command(name, corr if isinstance(corr, str) else None, direction if isinstance(direction, str) else None)


class Rechunker:
    """chan_websocket's process_binary_message outside bulk mode: a BINARY message becomes as many
    whole ``frame_size`` frames as it holds; a partial frame at its end is dropped."""

    def __init__(self, frame_size: int) -> None:
        self.frame_size = frame_size
        self.dropped_bytes = 0

    def frames(self, payload: bytes) -> list[bytes]:
        n = self.frame_size
        whole = len(payload) - len(payload) % n
        self.dropped_bytes += len(payload) - whole
        return [payload[i : i + n] for i in range(0, whole, n)]


class FlowControl:
    """The XOFF/XON hysteresis of chan_websocket's frame queue: ``queued`` after a frame is
    queued, ``dequeued`` before one is taken; each returns the event to send, if any."""

    def __init__(self) -> None:
        self.full = False

    def queued(self, length: int) -> str | None:
        if not self.full and length >= QUEUE_LENGTH_XOFF_LEVEL:
            self.full = True
            return "MEDIA_XOFF"
        return None

    def dequeued(self, length: int) -> str | None:
        if self.full and length < QUEUE_LENGTH_XON_LEVEL:
            self.full = False
            return "MEDIA_XON"
        return None
