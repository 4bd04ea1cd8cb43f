"""Issue 47: caller ID, the dialled number and Stasis arguments are the remote party's to choose.
A hostile one (over-long, with a newline, an ANSI escape and a lone surrogate) is answered like any
other, forges no log line, reaches no terminal as an escape, and is kept cleaned in the history."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging

from aiagent_tui import history_cli
from pbxsim.script import Pause, Say, WaitAgent
from tests.conftest import HELLO, history_of, running_engine

HOSTILE = "+1555\n\x1b[31m\udcff" + "0" * 68  # 80 characters
# What the engine keeps: each unsafe character replaced, cut to the history's 64 with an ellipsis.
CLEANED = "+1555\ufffd\ufffd[31m\ufffd" + "0" * 51 + "\u2026"


async def test_hostile_caller_id_is_answered_and_kept_cleaned(pbx, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_engine(pbx, tmp_path) as eng:
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.5), Pause(0.3)], caller_number=HOSTILE,
                             args=["sales\nforged line", "\x1b]0;owned\x07"])
        await asyncio.wait_for(rec.finished.wait(), 20)
        report = rec.report(pbx)
        assert report["answered"] and report["bridged"] and report["ended_by"] == "caller", report
        assert rec.media.agent_heard_s() > 0.5
        stored = await history_of(eng, rec.id)
        assert stored.caller_number == CLEANED and len(stored.caller_number) == 64
        assert "\n" not in stored.channel and "\x1b" not in stored.channel

        parser = argparse.ArgumentParser()
        history_cli.add_parser(parser.add_subparsers(dest="command"))
        out = io.StringIO()
        assert await asyncio.to_thread(history_cli.main, eng.config, parser.parse_args(["calls", "list"]), out) == 0
        listing = out.getvalue()
        assert "\x1b" not in listing and rec.id in listing

    messages = [r.getMessage() for r in caplog.records]
    (arrived,) = [m for m in messages if f"[{rec.id}] call from " in m]
    assert CLEANED in arrived
    # Every line about the call is one line, and none carries the escape or the surrogate.
    assert not [m for m in messages if rec.id in m and "\n" in m]
    assert not [m for m in messages if "\x1b" in m or "\udcff" in m]
