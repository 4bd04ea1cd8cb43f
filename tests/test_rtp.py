import struct

import pytest

from media.rtp import RtpPacket, RtpParseError, build_packet


def test_roundtrip_plain_packet():
    raw = build_packet(0, 65535, 0xFFFFFFFF, 0xDEADBEEF, b"\x7f" * 160, marker=True)
    p = RtpPacket.parse(raw)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (0, 65535, 0xFFFFFFFF, 0xDEADBEEF, True)
    assert p.payload == b"\x7f" * 160
    assert p.serialize() == raw


def test_csrc_extension_and_padding_are_stripped_from_payload():
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 0, 7, 1234, 99)
    csrc = struct.pack("!II", 1, 2)
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x01\x02\x03\x04"
    payload = b"abc"
    padding = b"\x00\x00\x03"
    p = RtpPacket.parse(header + csrc + ext + payload + padding)
    assert p.csrc == (1, 2)
    assert p.extension == b"\x01\x02\x03\x04"
    assert p.payload == b"abc"


def test_short_payload_is_valid():
    # Asterisk can end a prompt with a 12-byte packet (BEHAVIOUR.md): never assume 160 bytes.
    assert len(RtpPacket.parse(build_packet(0, 1, 160, 5, b"\xff" * 12)).payload) == 12


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x80\x00\x00", "truncated"),
        (struct.pack("!BBHII", 0x40, 0, 1, 1, 1) + b"x", "bad_version"),
        (struct.pack("!BBHII", 0x83, 0, 1, 1, 1) + b"\x00" * 8, "truncated"),  # 3 CSRCs, room for 2
        (struct.pack("!BBHII", 0x90, 0, 1, 1, 1) + struct.pack("!HH", 0, 4) + b"\x00" * 4, "truncated"),
        (struct.pack("!BBHII", 0xA0, 0, 1, 1, 1) + b"ab\x00", "bad_padding"),  # zero padding count
        (struct.pack("!BBHII", 0xA0, 0, 1, 1, 1) + b"ab\x09", "bad_padding"),  # more than there is
        (struct.pack("!BBHII", 0x80, 0xC8, 1, 1, 1) + b"\x00" * 8, "rtcp"),  # an RTCP sender report
    ],
)
def test_malformed_packets_are_rejected_with_a_reason(data, reason):
    with pytest.raises(RtpParseError) as e:
        RtpPacket.parse(data)
    assert e.value.reason == reason
