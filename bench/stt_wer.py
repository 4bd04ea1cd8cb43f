"""Word error rate and real-time factor of the local STT on Asterisk's own prompts.

    python bench/stt_wer.py [--engines whisper,pocketsphinx] [--limit N]
    python bench/stt_wer.py --profiles
    python bench/stt_wer.py --windows 30,15,10 [--limit N]
    python bench/stt_wer.py --departments [--renditions N]

--profiles: the questions of bench/answers.py and some full of the businesses' own names, spoken
by the simulator's caller voice at 8 kHz, transcribed by Whisper with nothing, with the profile's
words (AgentProfile.stt_prompt: the facts) as its initial prompt, and as hotwords
(providers.local.stt.VOCABULARY_AS). The same audio for the three; the voice samples, so another
run differs by a few words.

--windows: Whisper with each minimum encoder window (providers.local.stt_window_s) on the
prompts and on the profile questions (the facts as the initial prompt, as calls have them): word
error rate, time per item (p50, max) and the items the model looped on (its words repeated).

--departments: callers asking for a profile's departments in their own words, transcribed as calls
are (the facts as the prompt): how many transcripts name the department, and how many the local
pipeline turns into the right transfer (providers.intents.decide, which also takes a name that
sounds like a department's); how many questions for a thing named after a department ("Can I have
the billing address?") it takes for a transfer; and how many of the --profiles questions it takes
for an action. Each
spoken in --renditions renditions: the caller's voice samples, and one rendition in 37 of "Can you
put me through to billing?" came out "Can you put me to the billing".

Prompts: the top-level files of asterisk-core-sounds-en-wav whose names start with a to m (the
rest are held out), against their texts in asterisk-core-sounds-en's core-sounds-en.txt. Each is
fed as the engine feeds it: 8 kHz phone audio through u-law, in 20 ms frames, resampled to 16 kHz
with the engine's own streaming resampler. Target: WER under 0.05 with the default model.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import jiwer  # noqa: E402

from media.audio import Resampler, pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402
from providers.config import LocalProviderConfig  # noqa: E402
from providers.local.stt import PocketsphinxStt, SttModel, build_stt  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")


def prompts() -> list[tuple[Path, str]]:
    texts = {}
    for line in gzip.open(TEXTS, "rt", encoding="utf-8", errors="replace"):
        name, sep, text = line.partition(":")
        if sep and not line.startswith(";") and "/" not in name:
            texts[name.strip()] = text.strip()
    out = []
    for wav in sorted(SOUNDS.glob("*.wav")):
        text = texts.get(wav.stem, "")
        # Held out: n-z. Skipped: prompts whose "text" describes a sound ([beep], <beep>) or is empty.
        if wav.stem[0] in "abcdefghijklm" and text and "[" not in text and "<" not in text:
            out.append((wav, text))
    return out


def phone_audio(wav: Path) -> tuple[bytes, float]:
    """16 kHz PCM16 as the engine hands it to a provider, and the duration in seconds."""
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 8000 and w.getsampwidth() == 2
        pcm8 = w.readframes(w.getnframes())
    ulaw = pcm16_to_ulaw(pcm8)
    up = Resampler(8000, 16000)
    out = b"".join(up.process(ulaw_to_pcm16(ulaw[i : i + 160])) for i in range(0, len(ulaw), 160))
    return out, len(pcm8) / 16000


NORMALIZE = jiwer.Compose([jiwer.ToLowerCase(), jiwer.SubstituteRegexes({r"[-/]": " "}), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(m: re.Match) -> str:
    n = int(m.group())
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in m.group())


def normalize(text: str) -> str:
    """Compare words, not spelling: case, punctuation and digits-vs-words do not count."""
    text = re.sub(r"\.\.\.", " ", text)
    text = re.sub(r"\b[Dd]r\b\.?", "doctor", text)
    text = re.sub(r"\b\d+\b", _number_words, text)
    return NORMALIZE(text)


def measure(stt: SttModel, items: list[tuple[Path, str]]) -> tuple[float, float, list[tuple[str, str, str]]]:
    refs, hyps, misses = [], [], []
    audio_s = work_s = 0.0
    for wav, text in items:
        pcm, dur = phone_audio(wav)
        t0 = time.perf_counter()
        hyp = stt.transcribe(pcm)
        work_s += time.perf_counter() - t0
        audio_s += dur
        r, h = normalize(text), normalize(hyp)
        refs.append(r)
        hyps.append(h)
        if r != h:
            misses.append((wav.stem, r, h))
    return jiwer.wer(refs, hyps), work_s / audio_s, misses


NAMED = [
    ("dentist", "Is Doctor Maria Lopez working on Saturday?"),
    ("dentist", "Can I see Anna Berg for a cleaning?"),
    ("dentist", "Is Northside Dental on Harbour Street in Springfield?"),
    ("dentist", "Does Doctor Chen take children?"),
    ("pizza", "Is Luigi Russo there today?"),
    ("pizza", "Is Luigi's Pizzeria on Oak Avenue?"),
    ("pizza", "How much is a large margherita with a gluten-free crust?"),
    ("garage", "I need to talk to Tom Baker at Greenway Auto Repair."),
    ("garage", "Is the garage on Mill Road?"),
    ("garage", "Can you tow my car to Greenway?"),
]


def profile_questions() -> list[tuple[str, str, str]]:
    """(business facts, question, vocabulary) for the --profiles run."""
    from answers import DENTIST, GARAGE, PIZZA, QUESTIONS, UNANSWERABLE

    from providers.profile import AgentProfile

    facts = {"dentist": DENTIST, "pizza": PIZZA, "garage": GARAGE}
    items = [(f, q) for f, q, _ in QUESTIONS + UNANSWERABLE] + [(facts[b], q) for b, q in NAMED]
    return [(f, q, AgentProfile(facts=f).stt_prompt()) for f, q in items]


def measure_profiles() -> None:
    from pbxsim.voice import speak
    from providers.local import stt as stt_module

    items = profile_questions()
    audio = [phone_audio_of(speak(q)) for _, q, _ in items]
    print(f"profile questions: {len(items)} ({len(NAMED)} full of names), the simulator's caller voice, 8 kHz u-law")
    stt = build_stt(LocalProviderConfig())
    for label, how in (("no vocabulary", None), ("facts as initial prompt", "initial_prompt"), ("facts as hotwords", "hotwords")):
        refs, hyps, named_refs, named_hyps, misses = [], [], [], [], []
        t0 = time.perf_counter()
        for (_, q, vocab), pcm in zip(items, audio, strict=True):
            if how is not None:
                stt_module.VOCABULARY_AS = how
            h = stt.transcribe(pcm, vocab if how else "")
            r, h = normalize(q), normalize(h)
            refs.append(r)
            hyps.append(h)
            if q in dict(NAMED).values():
                named_refs.append(r)
                named_hyps.append(h)
            if r != h:
                misses.append((r, h))
        took = (time.perf_counter() - t0) / len(items)
        print(f"  {label:23s} WER {jiwer.wer(refs, hyps):.3f}   named questions WER {jiwer.wer(named_refs, named_hyps):.3f}   {took * 1000:.0f} ms a question")
        for r, h in misses[:4]:
            print(f"      {r!r} -> {h!r}")


DEPARTMENTS = {
    "billing": "invoices, payments and refunds",
    "appointments": "booking, moving or cancelling a visit",
    "operator": "the front desk",
}
DEPARTMENT_REQUESTS = [
    ("Can you put me through to billing, please?", "billing"),
    ("Can I talk to someone in billing about an invoice?", "billing"),
    ("I have a question about my bill, can you transfer me to billing?", "billing"),
    ("Billing, please.", "billing"),
    ("I'd like to speak to billing.", "billing"),
    ("Could you send me over to billing?", "billing"),
    ("Can I get billing, please?", "billing"),
    ("Connect me with appointments, please.", "appointments"),
    ("Can you transfer me to appointments?", "appointments"),
    ("I want to talk to the appointments desk.", "appointments"),
    ("Can you put me on to appointments?", "appointments"),
    ("Put me through to the operator please.", "operator"),
    ("Can I speak to the operator?", "operator"),
    ("Operator.", "operator"),
    ("Could you connect me to a real person at the front desk, the operator?", "operator"),
    ("Could you forward me to the operator?", "operator"),
    ("I need billing, please.", "billing"),
    ("I want a refund for my order.", "billing"),
]
# Wanting a thing named after a department, not the department: the LLM answers them.
DEPARTMENT_WORD_QUESTIONS = [
    "Can I have the billing address?",
    "I need the billing address for a check.",
    "Could I get the billing department's email?",
    "Can I have the refund policy?",
    "I'd like the operator's phone number.",
    "I want the appointments email address.",
]


def measure_departments(renditions: int) -> None:
    from answers import DENTIST
    from pbxsim.voice import speak

    from providers.intents import decide
    from providers.profile import AgentProfile, Department

    profile = AgentProfile(
        facts=DENTIST, departments={n: Department(description=d, context="from-internal", extension="200") for n, d in DEPARTMENTS.items()}
    )
    stt = build_stt(LocalProviderConfig())
    n = len(DEPARTMENT_REQUESTS) * renditions
    print(f"department requests: {len(DEPARTMENT_REQUESTS)} to {len(DEPARTMENTS)} departments, {renditions} renditions each "
          "in the simulator's caller voice, 8 kHz u-law")
    named = right = 0
    for q, dept in DEPARTMENT_REQUESTS:
        for r in range(renditions):
            heard = stt.transcribe(phone_audio_of(speak(q, r)), profile.stt_prompt())
            action = decide(heard, profile)
            words = normalize(heard).split()
            named += dept in words or dept.removesuffix("s") in words
            ok = action is not None and action.department == dept
            right += ok
            if not ok:
                print(f"      {q!r} (rendition {r}) -> {heard!r}: {action}")
    print(f"  the department's name in the transcript: {named}/{n}   transferred right: {right}/{n}")

    def taken_for_action(label: str, items: list[tuple[AgentProfile, str]]) -> None:
        """Questions, spoken and transcribed as calls are, that the rules take for an action."""
        taken = []
        for asked, q in items:
            for r in range(renditions):
                heard = stt.transcribe(phone_audio_of(speak(q, r)), asked.stt_prompt())
                if (action := decide(heard, asked)) is not None:
                    taken.append((heard, action))
        print(f"  {label}: {len(taken)}/{len(items) * renditions}")
        for heard, action in taken:
            print(f"      {heard!r}: {action}")

    taken_for_action("questions about a thing named after a department taken for a transfer",
                     [(profile, q) for q in DEPARTMENT_WORD_QUESTIONS])
    # The three businesses' questions, each business with these departments.
    taken_for_action("the businesses' questions taken for an action",
                     [(profile.model_copy(update={"facts": facts}), q) for facts, q, _ in profile_questions()])


def phone_audio_of(ulaw: bytes) -> bytes:
    """8 kHz u-law as the engine hands it to STT: 16 kHz PCM16 through its resampler."""
    up = Resampler(8000, 16000)
    return b"".join(up.process(ulaw_to_pcm16(ulaw[i : i + 160])) for i in range(0, len(ulaw), 160))


def measure_windows(windows: list[float], limit: int) -> None:
    from pbxsim.voice import speak

    asterisk = [(phone_audio(w)[0], text, "") for w, text in prompts()[: limit or None]]
    profile = [(phone_audio_of(speak(q)), q, vocab) for _, q, vocab in profile_questions()]
    print(f"Whisper's encoder window: {len(asterisk)} Asterisk prompts, {len(profile)} profile questions (the facts as initial prompt)")
    for window in windows:
        stt = build_stt(LocalProviderConfig(stt_window_s=window))
        for label, items in (("prompts", asterisk), ("profile questions", profile)):
            refs, hyps, took = [], [], []
            for pcm, text, vocab in items:
                t0 = time.perf_counter()
                hyp = stt.transcribe(pcm, vocab)
                took.append(time.perf_counter() - t0)
                refs.append(normalize(text))
                hyps.append(normalize(hyp))
            loops = sum(len(h.split()) > 1.5 * len(r.split()) for r, h in zip(refs, hyps, strict=True))
            took.sort()
            print(
                f"  window >= {window:4.1f} s  {label:17s} WER {jiwer.wer(refs, hyps):.3f}   "
                f"{took[len(took) // 2] * 1000:4.0f} ms p50  {took[-1] * 1000:5.0f} ms max   looped {loops}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", action="store_true", help="WER of profile questions with and without the vocabulary")
    ap.add_argument("--engines", default="whisper,pocketsphinx")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts")
    ap.add_argument("--show", type=int, default=5, help="print this many mismatches per engine")
    ap.add_argument("--departments", action="store_true", help="department requests: named in the transcript, and transferred right")
    ap.add_argument("--renditions", type=int, default=8, help="--departments: how many renditions of each request (the voice samples)")
    ap.add_argument("--windows", default="", help="minimum encoder windows to compare, in seconds: 30,15,10")
    args = ap.parse_args()
    if args.windows:
        measure_windows([float(w) for w in args.windows.split(",")], args.limit)
        return 0
    if args.profiles:
        measure_profiles()
        return 0
    if args.departments:
        measure_departments(args.renditions)
        return 0
    items = prompts()
    if args.limit:
        items = items[: args.limit]
    total = sum(phone_audio(w)[1] for w, _ in items)
    print(f"STT benchmark: {len(items)} prompts (a-m), {total:.0f} s of 8 kHz phone audio through u-law and the engine's 8->16 kHz resampler")
    cfg = LocalProviderConfig()
    for name in args.engines.split(","):
        stt = build_stt(cfg.model_copy(update={"stt_engine": name})) if name != "pocketsphinx" else PocketsphinxStt()
        wer, rtf, misses = measure(stt, items)
        print(f"  {name:13s} WER {wer:.3f}   real-time factor {rtf:.3f}   ({len(misses)} prompts not word-perfect)")
        for stem, r, h in misses[: args.show]:
            print(f"      {stem}: {r!r} -> {h!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
