"""AudioSocket's message framing (Asterisk's res/res_audiosocket.c), pure: no sockets.

A message is a 3-byte header, kind (1 byte) and payload length (big-endian 16 bits), then the
payload. Asterisk sends the UUID message first (16 bytes, the UUID in binary), then audio (signed
linear 16-bit little-endian at the rate its kind says) and DTMF (1 byte, the digit's character); a
connection's end is its EOF or a hangup message (kind 0x00, length 0). The 16-bit length bounds a
message to 64 KiB, so a reader never holds more than one.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_SLIN = 0x10  # 8 kHz
KIND_ERROR = 0xFF

# The audio kinds and their sample rates (AST_AUDIOSOCKET_KIND_AUDIO_SLIN12 .. SLIN192).
AUDIO_RATES: dict[int, int] = {
    0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000, 0x17: 96000, 0x18: 192000,
}
KIND_FOR_FORMAT: dict[str, int] = {
    "slin": 0x10, "slin12": 0x11, "slin16": 0x12, "slin24": 0x13, "slin32": 0x14, "slin44": 0x15, "slin48": 0x16,
    "slin96": 0x17, "slin192": 0x18,
}
KNOWN_KINDS = frozenset({KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_ERROR, *AUDIO_RATES})
HEADER = 3
MAX_PAYLOAD = 0xFFFF

_HDR = struct.Struct(">BH")


class Malformed(ValueError):
    """The stream cannot be read on: an unknown kind or a length that no message has. Nothing after
    it can be framed again (there are no sync marks): the connection must be closed."""


@dataclass(frozen=True, slots=True)
class Message:
    kind: int
    payload: bytes

    @property
    def is_audio(self) -> bool:
        return self.kind in AUDIO_RATES

    @property
    def rate(self) -> int:
        return AUDIO_RATES[self.kind]

    def uuid(self) -> str:
        """A UUID message's UUID in its usual text form (raises Malformed if it is not 16 bytes)."""
        if self.kind != KIND_UUID or len(self.payload) != 16:
            raise Malformed(f"a UUID message carries 16 bytes, this one {len(self.payload)}")
        return str(uuid.UUID(bytes=self.payload))


def encode(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"an AudioSocket message carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    return _HDR.pack(kind, len(payload)) + payload


def encode_uuid(value: str) -> bytes:
    return encode(KIND_UUID, uuid.UUID(value).bytes)


def encode_hangup() -> bytes:
    return encode(KIND_HANGUP)


def encode_audio(pcm16: bytes, kind: int = KIND_SLIN) -> bytes:
    return encode(kind, pcm16)


def encode_dtmf(digit: str) -> bytes:
    return encode(KIND_DTMF, digit.encode("ascii")[:1])


class Parser:
    """Incremental: ``feed`` bytes as they come, get whole messages out. Holds at most one
    message's bytes (header + 64 KiB). An unknown kind, or a zero length on a kind that carries a
    payload, raises Malformed at once, so a flood of junk is refused at its first bytes, never
    buffered."""

    __slots__ = ("_buf", "_need", "_kind")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._kind: int | None = None  # the current message's kind once its header is read
        self._need = HEADER

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        view = memoryview(data)
        pos = 0
        n = len(view)
        while pos < n:
            take = min(self._need - len(self._buf), n - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) < self._need:
                break
            if self._kind is None:
                kind, length = _HDR.unpack(self._buf)
                self._check(kind, length)
                if length == 0:  # a hangup
                    out.append(Message(kind, b""))
                    self._buf.clear()
                    continue
                self._kind = kind
                self._need = HEADER + length
                continue
            out.append(Message(self._kind, bytes(self._buf[HEADER:])))
            self._buf.clear()
            self._kind = None
            self._need = HEADER
        return out

    @staticmethod
    def _check(kind: int, length: int) -> None:
        if kind not in KNOWN_KINDS:
            raise Malformed(f"unknown message kind 0x{kind:02x}")
        if kind == KIND_HANGUP:
            return  # Asterisk sends 0 bytes; whatever length comes, the connection ends with it
        if length == 0:
            raise Malformed(f"message kind 0x{kind:02x} with length 0")
        if kind == KIND_UUID and length != 16:
            raise Malformed(f"UUID message of {length} bytes (16 expected)")
