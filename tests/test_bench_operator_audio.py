"""bench/operator_audio.py runs end to end (two bursts, the simulator) and prints its table: every
direction and path, every burst heard (no timing asserted: the figures are the bench's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "operator_audio.py"


def test_the_operator_audio_bench_prints_each_direction_and_path():
    run = subprocess.run([sys.executable, str(BENCH), "--bursts", "2"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = re.findall(r"^  (operator → caller|caller → operator)\s+(local|attached)\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+) ms\s+(\d+)/(\d+)$",
                      run.stdout, re.MULTILINE)
    assert {(d, p) for d, p, *_ in rows} == {(d, p) for d in ("operator → caller", "caller → operator") for p in ("local", "attached")}, run.stdout
    for *_, p50, p95, top, heard, of in rows:
        assert float(p50) <= float(p95) <= float(top)
        assert heard == of == "2"
