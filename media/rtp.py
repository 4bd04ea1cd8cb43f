"""RTP packets (RFC 3550 section 5.1): parse and validate, build. No I/O here."""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
HEADER_LEN = HEADER.size  # 12

PT_ULAW = 0


class RtpParseError(ValueError):
    """A datagram that is not a valid RTP packet; ``reason`` is a short metric-friendly label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True, kw_only=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: bytes | None = None  # profile-specific header extension, without its 4-byte head

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        n = len(data)
        if n < HEADER_LEN:
            raise RtpParseError("truncated", f"{n} bytes, an RTP header needs {HEADER_LEN}")
        b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise RtpParseError("bad_version", f"version {b0 >> 6}, expected 2")
        # RTCP multiplexed on the RTP port would have PT 72-76 with the marker bit (RFC 5761).
        if 72 <= (b1 & 0x7F) <= 76:
            raise RtpParseError("rtcp", f"payload type {b1 & 0x7F} is RTCP")
        offset = HEADER_LEN
        cc = b0 & 0x0F
        if cc:
            end = offset + 4 * cc
            if end > n:
                raise RtpParseError("truncated", f"CSRC count {cc} runs past the {n}-byte packet")
            csrc = struct.unpack_from(f"!{cc}I", data, offset)
            offset = end
        else:
            csrc = ()
        extension = None
        if b0 & 0x10:
            if offset + 4 > n:
                raise RtpParseError("truncated", "extension header runs past the packet")
            (ext_words,) = struct.unpack_from("!H", data, offset + 2)
            end = offset + 4 + 4 * ext_words
            if end > n:
                raise RtpParseError("truncated", f"extension of {ext_words} words runs past the packet")
            extension = bytes(data[offset + 4 : end])
            offset = end
        stop = n
        if b0 & 0x20:
            pad = data[-1]
            if pad == 0 or offset + pad > n:
                raise RtpParseError("bad_padding", f"padding count {pad} with {n - offset} bytes after the header")
            stop = n - pad
        return cls(
            payload_type=b1 & 0x7F,
            sequence=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[offset:stop]),
            marker=bool(b1 & 0x80),
            csrc=tuple(csrc),
            extension=extension,
        )

    def serialize(self) -> bytes:
        return build_packet(self.payload_type, self.sequence, self.timestamp, self.ssrc, self.payload, self.marker)


def build_packet(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """A plain RTP packet (no CSRC, extension or padding), as an engine sends it."""
    return (
        HEADER.pack(
            0x80,
            (0x80 if marker else 0) | (payload_type & 0x7F),
            sequence & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc & 0xFFFFFFFF,
        )
        + payload
    )
