"""bench/transports.py runs end to end on the simulator (rtp, tiny sizes) and prints its table: every
measurement's figures in the transport's row and the command of each (no timing asserted: the
figures are the bench's); a transport that cannot be set up says why in its row, the others still run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "transports.py"
MS = r"(\d+) / (\d+) ms"


def run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(BENCH), "--pbx", "sim", *argv], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


@pytest.mark.timeout(420)
def test_the_transports_bench_prints_every_measurement_of_rtp(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run("--transport", "rtp", "--callers", "1", "--rounds", "1", "--barge-calls", "1", "--barge-concurrency", "1",
               "--cpu-calls", "1", "--cpu-turns", "1", "--echo-calls", "1", "--echo-seconds", "3", "--out", str(tmp_path / "out"),
               "--json", str(out), timeout=400)
    row = re.search(rf"^\| rtp \| {MS} \| {MS} \| ([\d.]+) % \(([\d.]+) %\) \| (\d+) of (\d+) / (\d+) / (\d+) \|$", done.stdout, re.MULTILINE)
    assert row, done.stdout
    turn50, turn95, barge50, barge95, _cpu, _engine, lost, expected, _late, _under = (float(x) for x in row.groups())
    assert turn50 <= turn95 and barge50 <= barge95
    assert 0 <= lost <= expected and expected > 0
    # Each measurement's command, to run it alone; and its full output where the header says.
    for script in ("turn_latency.py", "barge_in.py", "cpu.py", "media_load.py"):
        assert re.search(rf"^  rtp +\w+ +python bench/{script} .*--pbx sim --transport rtp$", done.stdout, re.MULTILINE), done.stdout
    for measure in ("turn", "barge", "cpu", "echo"):
        assert (tmp_path / "out" / f"rtp-{measure}.txt").read_text().startswith("$ python bench/")
    figures = json.loads(out.read_text())["transports"]["rtp"]
    assert figures["error"] is None and not figures["failed"]
    assert set(figures["figures"]) == {"turn", "barge", "cpu", "echo"}


def test_a_transport_that_cannot_be_set_up_says_why_in_its_row_and_the_others_run(tmp_path: Path) -> None:
    # Nothing answers at TEST-NET-1: no AudioSocket connection can be made to the engine.
    done = run("--transports", "audiosocket,rtp", "--only", "echo", "--echo-calls", "1", "--echo-seconds", "2",
               "--set", "audiosocket.advertise_host=192.0.2.1", "--out", str(tmp_path), timeout=170)
    assert re.search(r"^\| audiosocket \| not set up: \S.* \|$", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^\| rtp \| \d+ of \d+ / \d+ / \d+ \|$", done.stdout, re.MULTILINE), done.stdout
    assert "python bench/media_load.py" in done.stdout and "--transport audiosocket" not in done.stdout.split("the commands")[1]
