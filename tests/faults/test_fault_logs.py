"""Item 8 of the fault probe: logs under fault are one line per kind per interval, with a count
of what was held back (a full disk, bad frames and bad packets would otherwise flood them)."""

from __future__ import annotations

import asyncio
import logging

from runtime.ratelimit import RateLimitedLog, RateLimitFilter
from tests.conftest import HELLO, running_engine


def test_one_line_per_kind_per_interval_with_the_count():
    now = [0.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.ratelimit")
    logger.addHandler(Keep())
    logger.propagate = False
    rl = RateLimitedLog(logger, interval_s=10, clock=lambda: now[0])
    for _ in range(500):
        rl.warning("disk", "no space left")
    rl.warning("frames", "bad frame")
    now[0] = 10.5
    rl.warning("disk", "no space left")
    assert records == ["no space left", "bad frame", "no space left (499 more like this in the last 10 s not logged)"]


def test_a_library_logger_is_limited_too():
    now = [0.0]
    f = RateLimitFilter(10, clock=lambda: now[0])
    rec = lambda: logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request", None, None)  # noqa: E731
    assert [f.filter(rec()) for _ in range(3)] == [True, False, False]
    now[0] = 11
    r = rec()
    assert f.filter(r) and "2 more like this" in r.msg


async def test_a_failing_media_dir_is_one_line_not_one_per_file(pbx, tmp_path, caplog):
    """Every playback file fails to write (as on a full disk; here the media dir is a plain file):
    the calls go on, the failures are counted, and the log says it once."""
    async with running_engine(pbx, tmp_path, AIAGENT_PROVIDER="tone", AIAGENT_DOWNSTREAM_MODE="file") as eng:
        eng.config.storage.media_dir = tmp_path / "full"
        (tmp_path / "full").write_bytes(b"")  # not a directory: every write fails
        calls = [pbx.place_call(str(HELLO), hold_s=1.5) for _ in range(3)]
        await asyncio.gather(*(asyncio.wait_for(c.finished.wait(), 20) for c in calls))
        assert eng.calls.playback_counters.files_failed >= 3
        assert all(c.report(pbx)["ended_by"] == "caller" for c in calls)
    lines = [r for r in caplog.records if "cannot write playback file" in r.getMessage()]
    assert len(lines) == 1


def test_a_clients_bad_request_is_a_one_line_warning():
    f = RateLimitFilter(10, clock=lambda: 0.0, client_faults=True)
    try:
        raise ValueError("Invalid character in Content-Length:\n\n  b'Content-Length: zz'\n")
    except ValueError as e:
        exc = (ValueError, e, e.__traceback__)
    r = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request from %s", ("127.0.0.1",), exc)
    assert f.filter(r)
    assert r.levelno == logging.WARNING and r.exc_info is None
    assert r.getMessage() == "Error handling request from 127.0.0.1: ValueError: Invalid character in Content-Length: b'Content-Length: zz'"
