"""Receive statistics of one RTP stream (RFC 3550 appendix A.1 and A.8).

Sequence numbers are extended to 32 bits (cycles of 65536) so that loss counts survive
wrap-around; duplicates are found in a sliding window of the last 1024 sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DROPOUT = 3000  # a forward jump larger than this is a sequence restart, not loss
MAX_MISORDER = 100  # a backward jump larger than this is a restart too
# A forward jump up to this is believed at once (ordinary loss, up to 100 ms); a larger one only
# when the next packet follows it: a stray packet then costs nothing, and a real burst of loss
# costs the one packet held on probation.
MAX_UNCONFIRMED_JUMP = 5
_WINDOW = 1024
_WINDOW_MASK = (1 << _WINDOW) - 1

# What update() says of a packet.
IN_ORDER = 0
DUPLICATE = 1
LATE = 2  # arrived after a higher sequence number (reordered)
PROBATION = 3  # a new SSRC or a large jump, not passed on until the next packet confirms it


@dataclass(slots=True, kw_only=True)
class RtpStreamStats:
    clock_rate: int = 8000
    ssrc: int | None = None
    packets: int = 0  # every valid packet accepted from this stream, duplicates included
    bytes: int = 0  # payload bytes
    duplicates: int = 0
    reordered: int = 0  # arrived after a higher sequence number
    sequence_resets: int = 0  # jumps too large to be loss (RFC 3550 A.1 restart)
    ssrc_changes: int = 0
    probation_dropped: int = 0  # packets never confirmed (stray, forged): not passed on
    probation_recovered: int = 0  # held, then confirmed by the next packet
    jitter: float = 0.0  # RFC 3550 interarrival jitter, in timestamp units
    first_arrival: float | None = None
    last_arrival: float | None = None
    _base_ext: int = 0  # extended sequence number of the first packet after (re)start
    _max_ext: int = -1
    _seen: int = 0  # bit k set = extended seq (_max_ext - k) was received
    _unique: int = 0  # distinct sequence numbers received since (re)start
    _lost_before_reset: int = 0
    _expected_before_reset: int = 0
    _transit: float | None = None
    _max_gap: float = field(default=0.0)
    _candidate: tuple[int, int] | None = None  # (ssrc, seq) of the packet held on probation

    def update(self, seq: int, timestamp: int, ssrc: int, payload_len: int, arrival: float) -> int:
        """Account one packet; ``arrival`` is a monotonic time in seconds.

        Returns IN_ORDER, DUPLICATE, LATE or PROBATION. Source validation after RFC 3550 A.1: a new
        SSRC, or a sequence jump of more than MAX_UNCONFIRMED_JUMP, is believed only once the next
        packet follows it in sequence, so one forged or stray packet cannot push the stream (and
        make the genuine packets after it look late)."""
        if self.ssrc != ssrc and self.ssrc is not None:
            if not self._confirmed(ssrc, seq):
                return PROBATION
            self.ssrc_changes += 1
            self._restart_sequence()
            self._transit = None
            self._start_at((seq - 1) & 0xFFFF)  # the packet that began the probation
            self._count_held(payload_len)
        self.ssrc = ssrc

        verdict = IN_ORDER
        if self._max_ext < 0:
            self._start_at(seq)
        else:
            cur = self._max_ext & 0xFFFF
            delta = (seq - cur) & 0xFFFF
            if delta == 0:
                self._count(payload_len, arrival)
                self.duplicates += 1
                return DUPLICATE  # a duplicate says nothing new about jitter
            if delta < MAX_DROPOUT:
                if delta > MAX_UNCONFIRMED_JUMP:
                    if not self._confirmed(ssrc, seq):
                        return PROBATION
                    self._advance(delta - 1)  # the packet that began the probation
                    self._count_held(payload_len)
                    delta = 1
                self._advance(delta)
            elif delta <= 0x10000 - MAX_MISORDER:
                if not self._confirmed(ssrc, seq):
                    return PROBATION
                self.sequence_resets += 1
                self._restart_sequence()
                self._start_at((seq - 1) & 0xFFFF)
                self._count_held(payload_len)
                self._advance(1)
            else:
                back = 0x10000 - delta  # how far behind the highest sequence number
                if back < _WINDOW:
                    bit = 1 << back
                    if self._seen & bit:
                        self._count(payload_len, arrival)
                        self.duplicates += 1
                        return DUPLICATE
                    self._seen |= bit
                if back > self._max_ext - self._base_ext:
                    # Older than the first packet: it extends the expected range backwards.
                    self._base_ext = self._max_ext - back
                self._unique += 1
                self.reordered += 1
                verdict = LATE
        self._count(payload_len, arrival)
        self._candidate = None

        # Interarrival jitter (RFC 3550 A.8), in arrival order.
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            # A timestamp wrap shows up as a ~2^32 step; it is not jitter.
            if d < 0x80000000:
                self.jitter += (d - self.jitter) / 16.0
        self._transit = transit
        return verdict

    def _confirmed(self, ssrc: int, seq: int) -> bool:
        """True if this packet follows the one held on probation; else it is held (dropped)."""
        cand = self._candidate
        if cand is not None and cand == (ssrc, (seq - 1) & 0xFFFF):
            return True
        self._candidate = (ssrc, seq)
        self.probation_dropped += 1
        return False

    def _count_held(self, payload_len: int) -> None:
        # The packet held on probation turned out genuine: received, though not passed on.
        self.probation_dropped -= 1
        self.probation_recovered += 1
        self.packets += 1
        self.bytes += payload_len

    def _count(self, payload_len: int, arrival: float) -> None:
        self.packets += 1
        self.bytes += payload_len
        if self.first_arrival is None:
            self.first_arrival = arrival
        elif arrival - self.last_arrival > self._max_gap:  # type: ignore[operator]
            self._max_gap = arrival - self.last_arrival  # type: ignore[operator]
        self.last_arrival = arrival

    def _advance(self, delta: int) -> None:
        self._seen = ((self._seen << delta) | 1) & _WINDOW_MASK
        self._max_ext += delta
        self._unique += 1

    def _start_at(self, seq: int) -> None:
        # Keep the extended numbering monotonic across restarts.
        base = (self._max_ext + 1) if self._max_ext >= 0 else 0
        ext = (base & ~0xFFFF) + seq
        if ext < base:
            ext += 0x10000
        self._base_ext = ext
        self._max_ext = ext
        self._seen = 1
        self._unique = 1

    def _restart_sequence(self) -> None:
        if self._max_ext >= 0:
            self._expected_before_reset += self._max_ext - self._base_ext + 1
            self._lost_before_reset += self._max_ext - self._base_ext + 1 - self._unique
        self._max_ext = -1
        self._unique = 0
        self._seen = 0

    @property
    def expected(self) -> int:
        current = self._max_ext - self._base_ext + 1 if self._max_ext >= 0 else 0
        return self._expected_before_reset + current

    @property
    def received(self) -> int:
        """Distinct packets received (duplicates not counted)."""
        return self.packets - self.duplicates

    @property
    def lost(self) -> int:
        current = (self._max_ext - self._base_ext + 1 - self._unique) if self._max_ext >= 0 else 0
        return self._lost_before_reset + current

    @property
    def loss_fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate

    @property
    def max_gap_ms(self) -> float:
        return self._max_gap * 1000.0

    @property
    def highest_sequence(self) -> int:
        return self._max_ext
