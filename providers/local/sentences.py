"""Cuts streamed LLM text into pieces TTS can speak at once: sentences, or a long sentence's
clauses, so that the first words are spoken while the rest is still being generated."""

from __future__ import annotations

import re

_ABBREV = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "no", "jr", "sr", "prof", "inc", "ltd"}
_END = re.compile(r"[.!?]+[\"')\]]*\s")
_CLAUSE = re.compile(r"[,;:]\s")
CLAUSE_MIN_WORDS = 8  # split a sentence at a comma only once it is this long


class SentenceSplitter:
    def __init__(self) -> None:
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            piece = self._next()
            if piece is None:
                return out
            out.append(piece)

    def flush(self) -> str | None:
        rest = " ".join(self._buf.split())
        self._buf = ""
        return rest or None

    def _next(self) -> str | None:
        buf = self._buf
        for m in _END.finditer(buf):
            head = buf[: m.end()].strip()
            last = head.rstrip(".!?\"')]").rsplit(None, 1)[-1].lower() if head.rstrip(".!?\"')]").split() else ""
            if buf[m.start()] == "." and (last in _ABBREV or (len(last) == 1 and last.isalpha())):
                continue  # "Dr. Smith", "J. Doe": not the end
            self._buf = buf[m.end() :]
            return " ".join(head.split())
        for m in _CLAUSE.finditer(buf):
            head = buf[: m.end()]
            if len(head.split()) >= CLAUSE_MIN_WORDS:
                self._buf = buf[m.end() :]
                return " ".join(head.split())
        return None


# Words a sentence does not end on: a caller who stops after one is pausing mid-sentence ("I would
# like to ... pay my bill"), whatever punctuation Whisper gave the pause.
_GOES_ON = frozenset(
    """a an the and or but so because if when while than that which who whose whom where to of in on at
    for from with about into onto by as like my your our their his her its i we you they he she it is are
    was were be been am will would can could should shall may might must do does did have has had not no
    um uh er erm hmm mm well just also then very really please""".split()
)


def reads_complete(text: str) -> bool:
    """Whether a caller's transcript reads as a finished sentence: it ends with a full stop, a
    question or an exclamation mark (not an ellipsis, a comma or nothing), on a word a sentence can
    end on. Ends the caller's turn at a short pause instead of the VAD's longer hangover."""
    t = text.strip().rstrip("\"')]")
    if not t or t[-1] not in ".?!" or t.endswith(".."):
        return False
    words = t.rstrip(".?!").split()
    return bool(words) and words[-1].lower().strip(",;:\"'") not in _GOES_ON
