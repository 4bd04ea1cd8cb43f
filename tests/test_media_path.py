"""The media path under bad input and its outbound RTP stream."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import numpy as np
import pytest

from media.rtp import build_packet
from tests.conftest import AGENT_PASS, HELLO, THANKS, wait_for

pytestmark = pytest.mark.parametrize("downstream_mode", ["stream"])  # RTP out of the engine


async def test_malformed_foreign_and_wrong_payload_packets_are_dropped_and_counted(pbx, engine):
    rec = pbx.place_call(str(THANKS), hold_s=0.5)
    await wait_for(lambda: rec.bridged and engine.rtp.routes)
    ep = pbx.external_endpoints[rec.external_media]
    session = engine.store.get(rec.id)
    engine_addr = ("127.0.0.1", engine.rtp.port)

    # From the call's own Asterisk address: garbage, a bad version, a wrong payload type.
    ep.transport.sendto(b"\x00\x01", engine_addr)
    ep.transport.sendto(struct.pack("!BBHII", 0x40, 0, 1, 1, 1) + b"x" * 160, engine_addr)
    ep.transport.sendto(build_packet(8, 1, 1, ep.ssrc, b"\xd5" * 160), engine_addr)  # PT 8 = alaw
    # From an address that belongs to no call.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(build_packet(0, 1, 1, 1234, b"\xff" * 160), engine_addr)
        stranger.sendto(b"not rtp at all", engine_addr)

    c = engine.rtp.counters
    await wait_for(lambda: c.foreign == 2 and sum(c.malformed.values()) == 2 and c.unsupported_payload == 1)
    assert c.malformed["truncated"] == 1 and c.malformed["bad_version"] == 1
    assert session.rtp_in_malformed == 2
    # The call went on: its SSRC was not replaced by the stranger's, the echo kept flowing. (Its own
    # first packet may come after the bad ones: the caller's stream starts on the bridge's tick.)
    await wait_for(lambda: session.rtp_in.packets > 0)
    assert session.rtp_in.ssrc == ep.ssrc and session.rtp_in.ssrc_changes == 0
    await asyncio.wait_for(rec.finished.wait(), 20)
    r = rec.report(pbx)
    assert r["hangup_clean"] and r["agent_audio_seconds"] > 4.0


async def test_packets_in_flight_when_a_call_ends_are_dropped_quietly_then_count_as_foreign(pbx, engine):
    """The bridge's last frames can arrive after the call's route went (UDP overtakes nothing, but
    the DELETE's answer may be read first): for ENDED_GRACE_S they are the ended call's, counted
    apart and not warned about; after that, its address is a stranger's like any other."""
    from engine import rtp_server

    rec = pbx.place_call(str(THANKS), hold_s=0.5)
    await wait_for(lambda: rec.bridged and engine.rtp.routes)
    ep = pbx.external_endpoints[rec.external_media]
    await asyncio.wait_for(rec.finished.wait(), 20)
    await wait_for(lambda: not engine.rtp.routes)
    engine_addr = ("127.0.0.1", engine.rtp.port)
    c = engine.rtp.counters
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as late:
        late.bind(ep.local)  # the ended call's Asterisk address (its port is free again)
        late.sendto(build_packet(0, 1, 1, 1, b"\xff" * 160), engine_addr)
        await wait_for(lambda: c.after_end == 1)
        assert c.foreign == 0
        engine.rtp._ended[ep.local] = 0.0  # the grace is over
        late.sendto(build_packet(0, 2, 2, 1, b"\xff" * 160), engine_addr)
        await wait_for(lambda: c.foreign == 1)
    assert rtp_server.ENDED_GRACE_S >= 1.0


async def test_outbound_rtp_is_one_paced_stream(pbx, engine):
    rec = pbx.place_call(str(AGENT_PASS), hold_s=0.5)
    await asyncio.wait_for(rec.finished.wait(), 20)
    log = pbx.external_endpoints[rec.external_media].rx_log
    assert len(log) > 100
    arrivals = np.array([e[0] for e in log])
    seqs = [e[1] for e in log]
    stamps = [e[2] for e in log]
    assert len({e[4] for e in log}) == 1  # one SSRC for the call
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    # Continuous speech: timestamps advance one frame per packet. Where they jump (whole frames),
    # the wall clock moved on without a packet, and it is said: a marker (the stream restarted
    # after the echo came late, on a loaded machine), or a pacer tick that ran late and skipped
    # ahead rather than burst, counted by the engine. Without load: no jump, no marker.
    steps = [(b - a) & 0xFFFFFFFF for a, b in zip(stamps, stamps[1:], strict=False)]
    markers = [e[3] for e in log[1:]]
    assert all(s >= 160 and s % 160 == 0 for s in steps), steps
    assert all(s > 160 for s, m in zip(steps, markers, strict=True) if m), "a marker without a gap"
    unmarked_jumps = sum(s != 160 and not m for s, m in zip(steps, markers, strict=True))
    assert unmarked_jumps <= engine.outbound.counters.late_ticks, (steps, engine.outbound.counters.late_ticks)
    # Paced, not burst: the stream spans real time (its timestamps' span), no pile-ups.
    span = arrivals[-1] - arrivals[0]
    assert abs(span - sum(steps) / 8000) < 0.1, (span, sum(steps) / 8000)
    assert np.sum(np.diff(arrivals) < 0.005) < len(log) * 0.05


async def test_outbound_gap_sets_marker_and_jumps_timestamp(pbx, engine):
    # Two utterances with a gap: caller speaks HELLO, the engine's echo stops, then resumes.
    rec = pbx.place_call(str(HELLO), hold_s=0.2)
    await asyncio.wait_for(rec.finished.wait(), 15)
    first = pbx.external_endpoints[rec.external_media].rx_log
    assert first
    session_media_ids = set(engine.calls.calls)  # the call is gone
    assert rec.id not in session_media_ids
    # Drive a second burst directly through the engine's pacer on a live call.
    rec2 = pbx.place_call(str(THANKS), hold_s=0.2)
    await wait_for(lambda: rec2.bridged and engine.rtp.routes)
    ep = pbx.external_endpoints[rec2.external_media]
    await wait_for(lambda: len(ep.rx_log) > 10)
    media = next(iter(engine.rtp.routes.values()))
    # Simulate the provider going quiet for 200 ms: flush and pause, then speak again.
    media.flush_outbound()
    rec2.media.muted = True
    before = len(ep.rx_log)
    # The 500 ms echo queue drains, then nothing is sent: a gap seen at the PBX, not slept for.
    await wait_for(lambda: not media.out_frames and ep.rx_log and time.monotonic() - ep.rx_log[-1][0] > 0.3,
                   what="the engine's stream quiet for 0.3 s at the PBX")
    quiet_until = len(ep.rx_log)
    rec2.media.muted = False
    await wait_for(lambda: len(ep.rx_log) > quiet_until + 5)
    gap_entry = ep.rx_log[quiet_until]
    prev = ep.rx_log[quiet_until - 1]
    assert quiet_until >= before
    assert gap_entry[3] is True  # marker on the first packet after the gap
    ts_jump = (gap_entry[2] - prev[2]) & 0xFFFFFFFF
    wall = gap_entry[0] - prev[0]
    assert abs(ts_jump / 8000 - wall) < 0.06  # the timestamp follows the wall clock
    assert (gap_entry[1] - prev[1]) & 0xFFFF == 1  # sequence numbers continue
    await asyncio.wait_for(rec2.finished.wait(), 20)

