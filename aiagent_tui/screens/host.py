"""What the calls screen needs of the app that shows it: declared here so the screens never import
the app (which imports them); AiAgentApp satisfies it structurally."""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

from rich.text import Text

from engine.api import EngineRuntime, EngineView


class CallsHost(Protocol):
    @property
    def engine(self) -> EngineView | None: ...  # None until the engine is up, and after it stops

    @property
    def runtime(self) -> EngineRuntime: ...

    @property
    def log_lines(self) -> deque[Text]: ...

    def write_log(self, call_id: str | None, message: str, level: int = logging.INFO) -> None: ...
