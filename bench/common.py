"""Small helpers the benchmarks share."""

from __future__ import annotations

import json
import socket
import tempfile
import urllib.request
from pathlib import Path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: dict | None = None):
    """GET (or POST ``data`` as JSON) and decode the JSON answer."""
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def scratch_media(scratch: str | None = None) -> str:
    """A media directory for one run's engine, in ``scratch`` (a new temporary directory by
    default), so that its call history (history.sqlite3 beside it) is the run's own too."""
    return str(Path(scratch or tempfile.mkdtemp(prefix="aiagent-bench-")) / "media")
