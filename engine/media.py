"""Per-call media: the caller's audio to the call's audio path, agent PCM to paced u-law frames,
whatever the transport (engine/transports.py) that carries them to and from Asterisk.

A packet is followed by name: ``RtpServer.datagram_received`` -> ``CallMedia.receive`` (or, on a
stream transport, its connection -> ``CallMedia.receive_stream``) -> ``MediaOwner.caller_audio``
(the Call) -> the conversation. Agent audio goes the other way: ``Outbound.agent_audio`` queues
frames on the CallMedia, the pacer (engine/pacer.py) hands one per 20 ms to the call's
``MediaLink``, and the pacer's news (stream started, queue drained, sends failing) goes back to the
owner by the same protocol.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from engine.recording import CallRecording
from engine.sessions import CallSession
from media.audio import UlawEncoder, ulaw_to_pcm16
from media.frames import FRAME_S, PCM_FRAME_BYTES, ULAW_FRAME_BYTES, ULAW_SILENCE
from media.rtp import RtpPacket
from media.rtp_stats import IN_ORDER, LATE

PREBUFFER_FRAMES = 2  # a stream starts once this much is queued (absorbs provider jitter)
PREBUFFER_MAX_FRAMES = 6  # a stream's prebuffer grows after underruns up to this (120 ms)
# An operator's microphone arrives in bursts (sounddevice blocks, a WebSocket over SSH): their
# stream starts once its first frame has waited this long, whatever the burst's size, so that the
# next burst may come that much late without a gap; and the queue keeps only the newest
# OPERATOR_MAX_FRAMES, so that a sender faster than real time cannot make the caller hear them later
# and later.
OPERATOR_HOLD_S = 0.06
OPERATOR_MAX_FRAMES = 10  # 200 ms


class LatencyRing:
    """The last N samples of one timing, in seconds; cheap to append on the hot path."""

    __slots__ = ("_buf", "_i", "count")

    def __init__(self, size: int = 1 << 16) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._i = 0
        self.count = 0

    def add(self, seconds: float) -> None:
        self._buf[self._i] = seconds
        self._i = (self._i + 1) % len(self._buf)
        self.count += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self.count, len(self._buf))].copy()

    def percentile_ms(self, q: float) -> float:
        v = self.values()
        return float(np.percentile(v, q) * 1000.0) if len(v) else 0.0

    def clear(self) -> None:
        self._i = 0
        self.count = 0


@dataclass(slots=True)
class MediaTimings:
    """Where the engine spends time per packet, for metrics and bench/media_load.py."""

    inbound: LatencyRing = field(default_factory=LatencyRing)  # datagram in -> handed to provider
    outbound: LatencyRing = field(default_factory=LatencyRing)  # provider audio -> frames queued, per frame
    send: LatencyRing = field(default_factory=LatencyRing)  # frame packetized and sent
    pacing_error: LatencyRing = field(default_factory=LatencyRing)  # send time - 20 ms deadline

    def clear(self) -> None:
        for ring in (self.inbound, self.outbound, self.send, self.pacing_error):
            ring.clear()


class MediaOwner(Protocol):
    """What a call's media reports to the call that owns it."""

    def caller_audio(self, pcm8: bytes, lost: int) -> None: ...  # one in-order packet (8 kHz PCM16), packets lost before it
    def stream_started(self, at: float) -> None: ...  # first outbound frame after a pause
    def stream_drained(self) -> None: ...  # the outbound queue ran empty
    def stream_send_failed(self) -> None: ...  # sends to Asterisk keep failing
    def media_lost(self, reason: str) -> None: ...  # the media connection ended before the call did (a stream transport's cut): the call ends


class MediaLink(Protocol):
    """One call's connection to Asterisk's media channel, as the transport carries it: what the
    pacer hands each 20 ms u-law frame to. ``send_frame`` returns False when the frame could not be
    sent (counted by the link; the pacer counts a run of them as the path failing)."""

    transport: str  # "rtp", "audiosocket", "websocket"
    where: str  # the far end, for the call's log and panes ("127.0.0.1:20002/udp", a URL)

    def attach(self, media: CallMedia) -> None: ...  # route the caller's audio to this call
    def send_frame(self, media: CallMedia, payload: bytes, marker: bool) -> bool: ...
    def flush(self) -> None: ...  # the agent's audio was dropped (barge-in): drop what Asterisk's side still holds to play
    def hangup(self) -> None: ...  # the call is ending, before ARI deletes the media channel: tell Asterisk's side
    def close(self) -> None: ...  # the call ended: stop routing, release the connection


class CallMedia:
    """The media state of one call: its link to Asterisk, outbound queue and stream counters. It is
    the only writer of the call's media counters (``session.rtp_in`` or ``stream_in``, ``rtp_out``
    and their drops)."""

    __slots__ = (
        "session",
        "recording",
        "link",
        "remote",
        "_in_partial",
        "owner",
        "send_failures",
        "_encoder",
        "_partial",
        "out_frames",
        "max_queue_frames",
        "ssrc",
        "seq",
        "ts",
        "last_tick",
        "dry_tick",
        "queued_at",
        "prebuffer",
        "paused",
        "bridged",
        "operator",
    )

    def __init__(self, session: CallSession, link: MediaLink, owner: MediaOwner, max_queue_frames: int = 1500) -> None:
        self.session = session
        self.link = link
        self.remote: tuple[str, int] | None = None  # RTP only (its link sets it): Asterisk's address for this call, which routes its packets
        self._in_partial = b""  # a stream transport's audio short of a whole frame
        session.transport = link.transport
        session.media_remote = link.where
        self.owner: MediaOwner | None = owner  # None once the call is being torn down: audio is dropped
        self.send_failures = 0
        self.recording: CallRecording | None = None  # the agent's frames as sent, when the profile records
        self._encoder = UlawEncoder()
        self._partial = b""
        self.out_frames: deque[bytes] = deque()
        self.max_queue_frames = max_queue_frames
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self.last_tick: int | None = None  # pacer tick of the last frame sent
        self.dry_tick: int | None = None  # tick at which a playing stream found its queue empty
        self.queued_at = 0.0  # loop time when the queue last went from empty to non-empty
        self.prebuffer = PREBUFFER_FRAMES  # frames queued before a stream (re)starts (the pacer adapts it)
        self.paused = False  # the agent's audio held: the caller may be talking over it
        self.bridged = False  # the ExternalMedia channel is in the bridge: what is sent reaches the caller
        self.operator = False  # what is queued is an operator's voice (the call taken over), not the agent's
        session.outbound_ssrc = self.ssrc

    # ---- inbound
    def receive(self, pkt: RtpPacket, arrival: float) -> int:
        """One valid u-law packet from this call's address: counted, and passed on if in order.
        Returns the stream statistics' verdict (media.rtp_stats)."""
        s = self.session
        before = s.rtp_in.highest_sequence
        verdict = s.rtp_in.update(pkt.sequence, pkt.timestamp, pkt.ssrc, len(pkt.payload), arrival)
        if verdict == LATE:
            # Playing a late frame would put audio out of order; loss concealment is the STT's job.
            s.rtp_in_late += 1
        elif verdict == IN_ORDER:
            gap = s.rtp_in.highest_sequence - before - 1 if before >= 0 else 0
            if self.owner is not None:
                # A jump too large to be loss (a restart) is not counted as lost frames.
                self.owner.caller_audio(ulaw_to_pcm16(pkt.payload), gap if 0 < gap < 50 else 0)
        return verdict

    def receive_stream(self, pcm8: bytes, arrival: float, samples: int | None = None, nbytes: int | None = None) -> None:
        """Caller audio from a stream transport (8 kHz PCM16, any length): counted, then passed on
        in whole 20 ms frames (the VAD and the echo reference work on frames). ``samples`` and
        ``nbytes`` are the message's own, when it came at another rate or coding."""
        s = self.session
        s.stream_in.update(len(pcm8) // 2 if samples is None else samples, len(pcm8) if nbytes is None else nbytes, arrival)
        data = self._in_partial + pcm8
        whole = len(data) - len(data) % PCM_FRAME_BYTES
        self._in_partial = data[whole:]
        for i in range(0, whole, PCM_FRAME_BYTES):
            s.stream_in.frames += 1
            if self.owner is not None:
                self.owner.caller_audio(data[i : i + PCM_FRAME_BYTES], 0)

    def malformed(self) -> None:
        if self.session.transport == "rtp":
            self.session.rtp_in_malformed += 1
        else:
            self.session.stream_in.malformed += 1

    # ---- outbound
    def operator_speaks(self, on: bool) -> None:
        """The outbound stream carries an operator's voice (``on``) or the agent's again: the queue
        is flushed either way (the agent's adapted prebuffer stays for its return)."""
        if on == self.operator:
            return
        self.flush_outbound()
        self.operator = on
        self.dry_tick = None  # a gap across the switch is neither's

    def ready(self, deadline: float) -> bool:
        """A stream that is not playing may (re)start at ``deadline``: the agent's once its
        prebuffer is queued (or its first frame waited that long), an operator's once its first
        frame waited OPERATOR_HOLD_S."""
        if self.operator:
            return deadline - self.queued_at >= OPERATOR_HOLD_S or len(self.out_frames) >= OPERATOR_MAX_FRAMES
        return len(self.out_frames) >= self.prebuffer or deadline - self.queued_at >= self.prebuffer * FRAME_S

    def agent_audio(self, pcm16: bytes, sample_rate: int) -> int:
        """Queue agent speech as 20 ms u-law frames; returns how many frames were added."""
        data = self._partial + self._encoder.encode(pcm16, sample_rate)
        whole = len(data) - len(data) % ULAW_FRAME_BYTES
        frames = self.out_frames
        for i in range(0, whole, ULAW_FRAME_BYTES):
            frames.append(data[i : i + ULAW_FRAME_BYTES])
        self._partial = data[whole:]
        overflow = len(frames) - (OPERATOR_MAX_FRAMES if self.operator else self.max_queue_frames)
        if overflow > 0:
            for _ in range(overflow):
                frames.popleft()  # the oldest: an operator is heard late no more than the queue's length
            if self.operator:
                self.session.rtp_out.operator_dropped += overflow
            else:
                self.session.rtp_out.overruns += overflow
        return whole // ULAW_FRAME_BYTES

    def finish_agent_audio(self) -> None:
        """End of an agent utterance: pad the last partial frame with silence and queue it."""
        if self._partial:
            self.out_frames.append(self._partial + bytes([ULAW_SILENCE]) * (ULAW_FRAME_BYTES - len(self._partial)))
            self._partial = b""

    def flush_outbound(self) -> int:
        """Drop all queued agent audio (barge-in); returns the frames dropped."""
        n = len(self.out_frames)
        if n or self.last_tick is not None:
            self.link.flush()
        self.out_frames.clear()
        self._partial = b""
        self.paused = False
        return n

    def sent(self, payload_bytes: int) -> None:
        self.send_failures = 0
        out = self.session.rtp_out
        out.packets += 1
        out.bytes += payload_bytes

    def paced(self, error_s: float) -> None:
        out = self.session.rtp_out
        out.last_pacing_error_ms = error_s * 1000.0
        if out.last_pacing_error_ms > out.max_pacing_error_ms:
            out.max_pacing_error_ms = out.last_pacing_error_ms

    def underrun(self) -> None:
        """A playing stream ran dry and audio came again soon after: a gap the caller heard. An
        operator's gaps are their line's, not the agent's audio running dry, and the prebuffer
        adapts to the agent's audio only."""
        out = self.session.rtp_out
        if self.operator:
            out.operator_gaps += 1
            return
        out.underruns += 1
        # An adaptive jitter buffer: a provider (or a line) whose audio comes late once will
        # again; its stream restarts with one more frame in hand.
        self.prebuffer = min(PREBUFFER_MAX_FRAMES, self.prebuffer + 1)
