from media.rtp_stats import DUPLICATE, IN_ORDER, LATE, PROBATION, RtpStreamStats


def feed(stats, seqs, ts_step=160, t_step=0.02, arrivals=None, ssrc=1):
    out = []
    for i, seq in enumerate(seqs):
        t = arrivals[i] if arrivals else i * t_step
        out.append(stats.update(seq, seq * ts_step, ssrc, 160, t))
    return out


def test_in_order_stream_has_no_loss_and_no_jitter():
    s = RtpStreamStats()
    feed(s, range(100, 150))
    assert (s.expected, s.received, s.lost, s.duplicates, s.reordered) == (50, 50, 0, 0, 0)
    assert s.jitter == 0.0


def test_loss_counts_the_gaps():
    s = RtpStreamStats()
    feed(s, [1, 2, 3, 6, 7, 10])  # 4, 5, 8, 9 missing
    assert s.expected == 10
    assert s.lost == 4
    assert abs(s.loss_fraction - 0.4) < 1e-9


def test_reordered_packet_fills_its_gap_and_is_counted():
    s = RtpStreamStats()
    verdicts = feed(s, [1, 2, 4, 3, 5])
    assert verdicts == [IN_ORDER, IN_ORDER, IN_ORDER, LATE, IN_ORDER]
    assert (s.expected, s.lost, s.reordered) == (5, 0, 1)


def test_duplicates_are_counted_not_received_twice():
    s = RtpStreamStats()
    verdicts = feed(s, [1, 2, 2, 3, 1])
    assert verdicts == [IN_ORDER, IN_ORDER, DUPLICATE, IN_ORDER, DUPLICATE]
    assert (s.packets, s.received, s.duplicates, s.lost, s.expected) == (5, 3, 2, 0, 3)


def test_sequence_wrap_is_not_loss():
    s = RtpStreamStats()
    feed(s, [65533, 65534, 65535, 0, 1, 2])
    assert (s.expected, s.lost) == (6, 0)


def test_first_packet_reordered_extends_expected_range():
    s = RtpStreamStats()
    feed(s, [11, 12, 10, 13])
    assert (s.expected, s.lost, s.reordered) == (4, 0, 1)


def test_jitter_matches_rfc3550_by_hand():
    # 8 kHz, timestamps 160 apart; arrivals 20, 30, 20 ms apart (the second packet 10 ms late).
    s = RtpStreamStats()
    feed(s, [0, 1, 2, 3], arrivals=[0.0, 0.020, 0.050, 0.070])
    # D values in timestamp units: |160-160|=0, |240-160|=80, |160-160|=0
    j = 0.0
    for d in (0, 80, 0):
        j += (d - j) / 16
    assert abs(s.jitter - j) < 1e-6
    assert abs(s.jitter_ms - j / 8) < 1e-6


def test_silence_gap_with_timestamp_jump_is_not_jitter():
    # Asterisk keeps sequence numbers across silence and jumps the timestamp by the gap.
    s = RtpStreamStats()
    s.update(1, 0, 1, 160, 0.0)
    s.update(2, 160, 1, 160, 0.02)
    s.update(3, 160 + 8000, 1, 160, 1.02)  # one second of silence later
    assert s.lost == 0
    assert s.jitter < 1e-6


def test_ssrc_change_restarts_sequence_tracking():
    s = RtpStreamStats()
    feed(s, [100, 101, 102], ssrc=1)
    feed(s, [5000, 5001], ssrc=2)
    assert s.ssrc_changes == 1
    assert s.ssrc == 2
    assert (s.expected, s.lost) == (5, 0)


def test_huge_jump_is_a_restart_not_thousands_lost():
    s = RtpStreamStats()
    feed(s, [1, 2, 3, 30000, 30001])
    assert s.sequence_resets == 1
    assert s.lost == 0


def test_one_forged_packet_far_ahead_does_not_push_the_stream():
    """Fault probe item 7: a packet with sequence +90 from the call's own address made the next 89
    genuine packets look late (1.8 s of speech dropped)."""
    s = RtpStreamStats()
    feed(s, range(1, 11))
    forged = s.update(100, 0, 1, 160, 0.3)
    verdicts = feed(s, range(11, 101))
    assert forged == PROBATION and set(verdicts) == {IN_ORDER}
    assert (s.lost, s.reordered, s.probation_dropped, s.expected) == (0, 0, 1, 100)


def test_a_real_jump_is_believed_when_the_next_packet_follows_it():
    s = RtpStreamStats()
    verdicts = feed(s, [1, 2, 3, 40, 41, 42])  # 36 packets really lost
    assert verdicts == [IN_ORDER, IN_ORDER, IN_ORDER, PROBATION, IN_ORDER, IN_ORDER]
    assert (s.lost, s.expected, s.probation_dropped, s.probation_recovered) == (36, 42, 0, 1)


def test_small_gaps_are_believed_at_once():
    s = RtpStreamStats()
    assert feed(s, [1, 2, 7, 8]) == [IN_ORDER] * 4
    assert s.lost == 4


def test_one_packet_of_another_ssrc_changes_nothing():
    s = RtpStreamStats()
    feed(s, range(1, 6), ssrc=7)
    assert s.update(9000, 0, 666, 160, 0.2) == PROBATION
    assert feed(s, range(6, 10), ssrc=7) == [IN_ORDER] * 4
    assert (s.ssrc, s.ssrc_changes, s.lost, s.probation_dropped) == (7, 0, 0, 1)
