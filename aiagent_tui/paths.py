"""Where the terminal app keeps its own files."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The app's log file and call dumps: $XDG_STATE_HOME/aiagent-tui (by default
    ~/.local/state/aiagent-tui), not the directory it was started from."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = Path(base) / "aiagent-tui"
    path.mkdir(parents=True, exist_ok=True)
    return path
