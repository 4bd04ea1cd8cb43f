"""Does the agent state the fact it is asked for? Business facts and plain questions through the
local provider's real prompt path (its system message with the facts, the model, the answer
length), scored per answer.

    python bench/answers.py [--models smollm2-135m,qwen2.5-coder-0.5b,qwen2.5-coder-0.5b-iq4nl] [--show]
    python bench/answers.py --model-path A.gguf --model-path B.gguf   # any GGUF files (instead of --models)

Each question names what a correct answer must say (any one of the listed spellings). Printed
per model: the score, the first-token and whole-answer latency (p50/p90) on this machine, and,
with --show, every answer that missed.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.config import LocalProviderConfig  # noqa: E402
from providers.profile import AgentProfile  # noqa: E402
from providers.local.llm import ChatModel  # noqa: E402
from providers.facts.echo import echo_check  # noqa: E402
from providers.local.models import resolve_llm  # noqa: E402
from providers.local.sentences import SentenceSplitter  # noqa: E402

DENTIST = """Northside Dental, 14 Harbour Street, Springfield.
Open Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm, closed on Sunday and public holidays.
Dentists: Dr. Maria Lopez and Dr. James Chen. Hygienist: Anna Berg.
A first check-up costs 65 dollars; a cleaning costs 90 dollars.
Free parking behind the building. We accept cash, credit cards and debit cards.
Children are welcome from the age of three.
For a dental emergency outside opening hours call 555 0199."""

PIZZA = """Luigi's Pizzeria, 220 Oak Avenue.
Open every day from 11 am to 11 pm.
A large margherita costs 14 dollars; a large pepperoni costs 16 dollars.
Delivery within 3 miles, free for orders over 25 dollars, usually 30 to 40 minutes.
We have gluten-free crusts. The owner is Luigi Russo.
Table bookings for 6 or more people only."""

GARAGE = """Greenway Auto Repair, 9 Mill Road.
Open Monday to Saturday 7:30 am to 5:30 pm.
An oil change costs 49 dollars; a brake inspection is free.
We repair all makes, including electric cars. Courtesy cars are available if booked a day ahead.
The service manager is Tom Baker. Towing is available 24 hours on 555 0142."""

# (facts, question, what the answer must say: any one of these)
QUESTIONS: list[tuple[str, str, tuple[str, ...]]] = [
    (DENTIST, "What time do you open on Saturday?", ("9",  "nine")),
    (DENTIST, "Are you open on Sunday?", ("closed", "not open", "no")),
    (DENTIST, "Where are you located?", ("harbour", "harbor")),
    (DENTIST, "Which dentists work there?", ("lopez", "chen")),
    (DENTIST, "Is there parking?", ("parking",)),
    (DENTIST, "How much is a first check-up?", ("65", "sixty-five", "sixty five")),
    (DENTIST, "How much does a cleaning cost?", ("90", "ninety")),
    (DENTIST, "Do you take credit cards?", ("yes", "credit")),
    (DENTIST, "Can I bring my two year old?", ("three", "3")),
    (DENTIST, "What number do I call for an emergency at night?", ("0199", "01 99", "555")),
    (DENTIST, "Who is the hygienist?", ("anna", "berg")),
    (DENTIST, "When do you close on weekdays?", ("6", "six")),
    (PIZZA, "What are your opening hours?", ("11",  "eleven")),
    (PIZZA, "How much is a large margherita?", ("14", "fourteen")),
    (PIZZA, "How much is a large pepperoni?", ("16", "sixteen")),
    (PIZZA, "Do you deliver?", ("yes", "deliver")),
    (PIZZA, "Is delivery free?", ("25", "twenty-five", "twenty five")),
    (PIZZA, "How long does delivery take?", ("30", "thirty", "40", "forty")),
    (PIZZA, "Do you have gluten-free pizza?", ("gluten",)),
    (PIZZA, "Who owns the restaurant?", ("luigi", "russo")),
    (PIZZA, "Can I book a table for two?", ("6", "six", "no")),
    (PIZZA, "What is your address?", ("oak",)),
    (PIZZA, "Are you open on Sunday?", ("yes", "every day", "11")),
    (GARAGE, "How much is an oil change?", ("49", "forty-nine", "forty nine")),
    (GARAGE, "Do you charge for a brake inspection?", ("free", "no")),
    (GARAGE, "Do you fix electric cars?", ("yes", "electric")),
    (GARAGE, "Can I get a courtesy car?", ("yes", "day ahead", "a day", "book")),
    (GARAGE, "Who is the service manager?", ("tom", "baker")),
    (GARAGE, "What time do you open?", ("7:30", "7.30", "seven thirty", "7 30")),
    (GARAGE, "Are you open on Saturday?", ("yes", "saturday")),
    (GARAGE, "My car broke down, can you tow it?", ("tow", "0142", "555")),
    (GARAGE, "Where is the garage?", ("mill",)),
    (GARAGE, "When do you close?", ("5:30", "5.30", "five thirty", "5 30")),
]


# Questions the facts do not answer: an honest answer says so (and offers a transfer).
HONEST = ("know", "not sure", "transfer", "put you through", "connect")
UNANSWERABLE: list[tuple[str, str, tuple[str, ...]]] = [
    (DENTIST, "Do you do teeth whitening?", HONEST),
    (DENTIST, "Is Dr. Lopez married?", HONEST),
    (DENTIST, "Do you offer braces for adults?", HONEST),
    (PIZZA, "Do you have vegan cheese?", HONEST),
    (PIZZA, "Do you sell beer?", HONEST),
    (PIZZA, "Is there a kids menu?", HONEST),
    (GARAGE, "Do you sell used cars?", HONEST),
    (GARAGE, "Do you rotate tires?", HONEST),
]


def correct(answer: str, want: tuple[str, ...]) -> bool:
    a = re.sub(r"\s+", " ", answer.lower())
    if want is not HONEST and re.search(r"\b(don't|do not) know\b|not sure", a):
        return False  # "I don't know" is no answer to a question the facts do answer
    return any(w in a for w in want)


def answer(model: ChatModel, profile: AgentProfile, question: str, cfg: LocalProviderConfig, checked: bool, seen: list[float], t0: float) -> str:
    """The local provider's answer path: the profile's instructions, the model's streamed answer
    cut into sentences, and (``checked``) the first sentence held against the facts."""
    splitter = SentenceSplitter()
    first: list[str] = []
    stop = threading.Event()

    def on_text(piece: str) -> None:
        if not seen:
            seen.append(time.perf_counter() - t0)
        if checked and not first:
            first.extend(splitter.feed(piece)[:1])
            if first and echo_check(first[0], question, profile.facts, profile.unknown_answer) is not None:
                stop.set()  # the provider cancels the rest of a replaced answer

    messages = [{"role": "system", "content": profile.instructions()}, {"role": "user", "content": question}]
    reply = model.generate(messages, cfg.llm_max_tokens, cfg.llm_temperature, on_text, stop)
    if checked:
        head = first[0] if first else (splitter.flush() or reply)
        instead = echo_check(head, question, profile.facts, profile.unknown_answer)
        if instead is not None:
            return instead
    return reply


def run_model(name: str, temperature: float | None, checked: bool, path: str = "") -> tuple[float, int, list[float], list[float], list[tuple[str, str]]]:
    """One pass over the questions with the packaged model ``name``, or the GGUF file ``path``
    (providers.local.llm_model_path) when given."""
    cfg = LocalProviderConfig(llm_model_path=path) if path else LocalProviderConfig(llm_model=name)  # type: ignore[arg-type]
    if temperature is not None:
        cfg.llm_temperature = temperature
    model = ChatModel(resolve_llm(cfg.llm_model, cfg.llm_model_path), cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
    first, whole, misses, right, honest = [], [], [], 0, 0
    for facts, question, want in QUESTIONS + UNANSWERABLE:
        t0 = time.perf_counter()
        seen: list[float] = []
        said = answer(model, AgentProfile(facts=facts), question, cfg, checked, seen, t0)
        whole.append(time.perf_counter() - t0)
        first += seen
        if not correct(said, want):
            misses.append((question, said.strip()))
        elif want is HONEST:
            honest += 1
        else:
            right += 1
    return right / len(QUESTIONS), honest, first, whole, misses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="packaged models (providers.local.llm_model); default: all three, or none with --model-path")
    ap.add_argument("--model-path", action="append", default=[], metavar="FILE", help="a GGUF file to measure too (repeatable)")
    ap.add_argument("--check", choices=("both", "alone", "checked"), default="both", help="the model alone, with the facts check, or both")
    ap.add_argument("--show", action="store_true", help="print every answer that missed its fact")
    ap.add_argument("--temperature", type=float, help="instead of providers.local.llm_temperature")
    ap.add_argument("--runs", type=int, default=1, help="repeat (the model samples: scores vary by a question or two)")
    args = ap.parse_args()
    print(f"answers: {len(QUESTIONS)} questions about 3 businesses and {len(UNANSWERABLE)} the facts do not answer, the local provider's answer path, {LocalProviderConfig().llm_threads} thread(s)")
    models = args.models if args.models is not None else ("" if args.model_path else "smollm2-135m,qwen2.5-coder-0.5b,qwen2.5-coder-0.5b-iq4nl")
    runs = [(name, "") for name in models.split(",") if name] + [(Path(p).stem, p) for p in args.model_path]
    modes = {"both": (False, True), "alone": (False,), "checked": (True,)}[args.check]
    for name, path in runs:
        for checked in modes:
            for _ in range(args.runs):
                score, honest, first, whole, misses = run_model(name, args.temperature, checked, path)
                f, w = np.array(first) * 1000, np.array(whole) * 1000
                label = f"{name} {'+ facts check' if checked else '(model alone)'}"
                print(
                    f"  {label:44s} facts stated {score * 100:5.1f}%   honest when they do not say {honest}/{len(UNANSWERABLE)}"
                    f"   first token p50 {np.percentile(f, 50):4.0f} ms p90 {np.percentile(f, 90):4.0f} ms"
                    f"   whole answer p50 {np.percentile(w, 50):5.0f} ms p90 {np.percentile(w, 90):5.0f} ms",
                    flush=True,
                )
                if args.show:
                    for q, a in misses:
                        print(f"      missed: {q!r} -> {a!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
