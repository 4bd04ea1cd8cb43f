"""Piper's cost per sentence in the TTS worker's setup (providers/local/tts.py): wall time and CPU
time of all of onnxruntime's threads, with its worker threads sleeping between operators (the
engine's setting) and spinning (onnxruntime's default), one sentence every 0.3 s as in a call.

    python bench/tts_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
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
    print(f"Piper ({JOE_VOICE.package}), {len(SENTENCES)} sentences x {args.rounds}, twice each way, median per sentence:")
    for label, spin in (("threads sleep (engine)", False), ("threads spin (default)", True)) * 2:
        wall, cpu = measure(PiperTts(path, spin=spin), args.rounds)
        print(f"  {label:24s} {wall * 1000:5.0f} ms   {cpu * 1000:5.0f} CPU-ms (with the 0.3 s after it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
