"""A caller's words as Whisper writes them ("r u open sundays", "What's your address?", "5pm"),
made comparable with the words of a business's data: one spelling, stems, and sound-alike matches
for the names speech recognition gets slightly wrong ("filing" for "filling", "Lopes" for "Lopez")."""

from __future__ import annotations

import re

import jellyfish

# Texting and speech shorthand, and contractions, as the full words the rules look for.
_SHORT = {"r": "are", "u": "you", "ur": "your", "ya": "you", "yall": "you", "y'all": "you", "thru": "through", "tmrw": "tomorrow",
          "tmr": "tomorrow", "tomorow": "tomorrow", "2morrow": "tomorrow", "tonite": "tonight", "wat": "what", "whats": "what is",
          "what's": "what is", "when's": "when is", "where's": "where is", "who's": "who is", "how's": "how is", "it's": "it is",
          "you're": "you are", "you've": "you have", "what're": "what are", "til": "until", "till": "until", "doctor's": "doctor",
          "dr": "doctor", "dentist's": "dentist", "owns": "owner", "ok": "okay", "o'clock": "oclock", "noon": "12 pm", "midday": "12 pm", "midnight": "12 am"}

# Words that carry no fact: function words, fillers, politeness. What is left of a question once
# these and the words its topic understands are gone is something the rules did not understand.
STOP = frozenset("""
a an the and or but so of to for in on at by from with about as into than then this that these those there here it its
i me my we our us you your he she they them their his her is are am was were be been being do does did doing have has had
will would could can should may might must shall what when where which who whom how why if any some anyone anybody one
please thanks thank hi hello hey um uh er ah oh okay yeah yes no well just also actually really quick question ask asking
wondering wonder wanted want like know tell let see need get got go going come calling call guys folks sir maam mam
right now still currently yet again other else more much many very too either both all each every whether
i'd i'm i'll i've we're we'd we'll that's there's don't doesn't didn't can't won't isn't aren't let's you'd wouldn't couldn't
wanna gonna gotta kinda sorry excuse chance curious possible possibly maybe perhaps usually normally generally typically
check confirm out sure exactly because anyway calling called
""".split())
# What a name of the data (a service, a role) is made of: all its words but these.
_NAME_STOP = frozenset({"a", "an", "the", "of", "and", "for", "with", "to", "in", "on"})

_ORDINAL_UNITS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
ORDINALS = {w: i + 1 for i, w in enumerate(_ORDINAL_UNITS)} | {
    w: i + 10 for i, w in enumerate(["tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
                                     "seventeenth", "eighteenth", "nineteenth"])
} | {"twentieth": 20, "thirtieth": 30, "thirty first": 31} | {f"twenty {w}": 21 + i for i, w in enumerate(_ORDINAL_UNITS)}


_NUMBERS = {w: str(i + 1) for i, w in enumerate("one two three four five six seven eight nine ten eleven twelve".split())}
_SPOKEN_TIME = re.compile(r"\b(at|after|around|about|until|till|past) (" + "|".join(_NUMBERS) + r")(?: (thirty|fifteen|forty five))?\b")


def _spoken_time(m: re.Match[str]) -> str:
    minutes = {"thirty": ":30", "fifteen": ":15", "forty five": ":45"}.get(m.group(3) or "", "")
    return f"{m.group(1)} {_NUMBERS[m.group(2)]}{minutes}"


def normalise(text: str) -> str:
    """Lower case, one spelling of times and shorthand, no punctuation but apostrophes in words and
    the colon of a time."""
    t = text.lower().replace("’", "'").replace("‘", "'")
    t = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", t)  # "p.m." -> "pm"
    t = re.sub(r"(\d)\s*([ap])m\b", r"\1 \2m", t)  # "5pm" -> "5 pm"
    t = re.sub(r"(\d)\.(\d\d)\b", r"\1:\2", t)  # "5.30" -> "5:30"
    t = re.sub(r"(?<!\d):|:(?!\d)", " ", t)
    t = re.sub(r"[^a-z0-9:' ]+", " ", t.replace("-", " "))
    t = re.sub(r"\bmy name is \w+", " ", t)  # "Hi, my name is John, are you open on Saturday?"
    t = _SPOKEN_TIME.sub(_spoken_time, t)  # "at five thirty": the time in digits, as Whisper mostly writes it
    words = [_SHORT.get(w, w) for w in (w.strip("'") for w in t.split()) if w]
    return " ".join(w.removesuffix("'s") for w in words)  # "Saturday's hours", "the doctor's name"


def stem(word: str) -> str:
    """A crude stem: enough that "cleanings", "cleaning" and "clean" meet, and "parking", "park"."""
    w = word.removesuffix("'s").replace("'", "")
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and re.search(r"(s|x|ch|sh)es$", w):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    return w


def content(text: str) -> list[str]:
    """The words of ``text`` (normalised) that are not STOP words."""
    return [w for w in normalise(text).split() if w not in STOP]


def same_word(said: str, known: str) -> bool:
    """``said`` (a caller's word) is ``known`` (a word of the data): the same stem, or written the
    way speech recognition writes it (same sound code and first letter, or one letter off)."""
    if stem(said) == stem(known):
        return True
    if len(said) < 4 or len(known) < 4 or said[0] != known[0] or said.isdigit() or known.isdigit():
        return False
    letters = jellyfish.levenshtein_distance(said, known)  # the sound alone is too loose: "look" sounds like "Luca"
    return (letters <= 2 and jellyfish.metaphone(said) == jellyfish.metaphone(known)) or (min(len(said), len(known)) >= 6 and letters <= 1)


def matched(name: str, said: list[str]) -> list[str] | None:
    """The caller's words that say ``name`` (each word of it said; or all of it as one, "checkup"
    for "check up", or two words for one, "tune up" for "tuneup"), or None."""
    known = [w for w in normalise(name).split() if w not in _NAME_STOP]
    used = [next((w for w in said if same_word(w, k)), "") for k in known]
    if known and all(used):
        return used
    whole = "".join(known)
    pairs = {a + b: [a, b] for a, b in zip(said, said[1:], strict=False)}
    hit = next((w for w in [*said, *pairs] if len(whole) >= 5 and same_word(w, whole)), None)
    return None if hit is None else pairs.get(hit, [hit])
