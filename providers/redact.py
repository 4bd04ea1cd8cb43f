"""What may be shown of a secret, of text that came from a server, and of text the remote party chose.

Whatever a model server or Deepgram says in an error ends up in /health (served without
authentication), in every attached console, in ``doctor`` and in the log. Such a server may reflect
the API key ("Incorrect API key provided: sk-...") or send anything at all (escape sequences, a
newline that forges a log line, a megabyte of HTML): ``server_text`` is the one way such text is
let in. ``clean_text`` is the one way text a caller chose (caller ID, dialled number, Stasis
arguments: a newline forges a log line, an ESC drives the operator's terminal, a lone surrogate is
refused by the database) is bounded and made safe to store and show. ``shown_url`` is the one way a URL with credentials is shown (the history's database URL,
a model server's URL).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

REDACTED = "[redacted]"
MAX_SERVER_TEXT = 300  # characters of a server's error kept: enough to say what is wrong

REPLACEMENT = "\ufffd"
# Bidirectional overrides make text read other than it is; with control characters (C0, DEL, C1),
# lone surrogates and line/paragraph separators, none belongs in a one-line value.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# What looks like a credential whoever's it is: an Authorization header's value, a "key=..."
# pair, a vendor-prefixed key (sk-..., dg_...), and any long run of letters and digits mixed.
_KEY_LIKE = (
    (re.compile(r"(?i)\b(bearer|token|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(api[-_]?key|apikey|access[-_]?token|token|secret|password|passwd)(\"?\s*[:=]\s*\"?)[^\s\"',;&}]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"\b(?:sk|pk|rk|gsk|xai|dg|key|api|tok)[-_][A-Za-z0-9_-]{8,}"), REDACTED),
    # (A UUID, a request's id more likely than a secret, stays.)
    (re.compile(r"\b(?![0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
                r"(?=[A-Za-z_-]*[0-9])(?=[0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}\b"), REDACTED),
)


def clean_text(value: str, limit: int | None = None) -> str:
    """``value`` with every unsafe character replaced by U+FFFD, cut to ``limit`` characters (the
    last one an ellipsis when cut)."""
    if value.isprintable() and (limit is None or len(value) <= limit):
        return value  # the common case, at C speed
    out = "".join(REPLACEMENT if c in _BIDI or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") else c for c in value)
    return out if limit is None or len(out) <= limit else out[: limit - 1] + "\u2026"


def server_text(text: str, secrets: Iterable[str] = (), limit: int = MAX_SERVER_TEXT) -> str:
    """``text`` from a server, fit to show anywhere: the ``secrets`` this engine sent it (its API
    key, a URL's password) and anything key-like replaced by [redacted], control characters out,
    on one line, at most ``limit`` characters."""
    text = clean_text(" ".join(text.split()))  # newlines and tabs as spaces, the rest replaced
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _KEY_LIKE:
        text = pattern.sub(replacement, text)
    return clean_text(text, limit)


def shown_url(url: str) -> str:
    """A URL as it may be printed or logged: its password masked (a database URL, a model
    server's)."""
    try:
        return make_url(url).render_as_string(hide_password=True) if url else url
    except ArgumentError:
        return "(not a URL)"


def url_password(url: str) -> str:
    """The password in ``url`` ("" if none): a secret its server may reflect."""
    try:
        return (make_url(url).password or "") if url else ""
    except ArgumentError:
        return ""
