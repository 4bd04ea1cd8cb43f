"""Piper's cost per sentence in the TTS worker's setup (providers/local/tts.py): wall time and CPU
time of all of onnxruntime's threads, one sentence every 0.3 s as in a call; on one thread (the
engine's default, providers.local.tts_threads) and on one a core, with the threads sleeping between
operators (the engine's setting) and spinning (onnxruntime's default).

    python bench/tts_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.config import LocalProviderConfig  # noqa: E402
from providers.local.models import JOE_VOICE, resolve  # noqa: E402
from providers.local.tts import PiperTts  # noqa: E402

SENTENCES = [
    "Putting you through to billing now.",
    "We are open Monday to Friday from 8 am to 6 pm.",
    "I'm sorry, I don't know that. Shall I put you through to someone who does?",
    "Doctor Maria Lopez works on Tuesdays and Thursdays.",
]


def measure(tts: PiperTts, rounds: int) -> tuple[float, float]:
    tts.synthesize(SENTENCES[0])  # warm-up
    wall, cpu = [], []
    for _ in range(rounds):
        for text in SENTENCES:
            c0, t0 = time.process_time(), time.perf_counter()
            tts.synthesize(text)
            wall.append(time.perf_counter() - t0)
            time.sleep(0.3)  # the gap to the next sentence: threads that spin burn it
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    path = resolve(JOE_VOICE, LocalProviderConfig().tts_voice_path)
    cores = os.cpu_count() or 1
    print(f"Piper ({JOE_VOICE.package}), {len(SENTENCES)} sentences x {args.rounds}, twice each way, median per sentence:")
    ways = (("1 thread (engine)", 1, False), (f"{cores} threads, sleeping", cores, False), (f"{cores} threads, spinning", cores, True))
    for label, threads, spin in ways * 2:
        wall, cpu = measure(PiperTts(path, threads, spin=spin), args.rounds)
        print(f"  {label:24s} {wall * 1000:5.0f} ms   {cpu * 1000:5.0f} CPU-ms (with the 0.3 s after it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
