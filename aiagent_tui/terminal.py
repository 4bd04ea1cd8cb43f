"""The app's plumbing to the terminal and the log: a driver that survives the terminal going away,
and the handler that brings the engine's warnings to the log pane."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, TextIO, cast

from textual.app import App
from textual.drivers.linux_driver import LinuxDriver

LogWriter = Callable[[str | None, str, int], None]  # (call id or None, message, level)


class PaneHandler(logging.Handler):
    """Log records of WARNING and up, from any of the engine's modules, into the log pane: what
    an operator must see does not stay in the log file. The store's own lines come as events."""

    def __init__(self, app: App[Any], write: LogWriter) -> None:
        super().__init__(logging.WARNING)
        self.app = app
        self.write = write
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "engine.sessions":  # SessionStore.log: shown from its CallLog event
            return
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({record.exc_info[1].__class__.__name__}: {record.exc_info[1]}; the log file has the traceback)"
            if threading.get_ident() == self._thread:
                self.write(None, message, record.levelno)
            else:
                self.app.call_from_thread(self.write, None, message, record.levelno)
        except Exception:  # the app is closing: the log file still has it
            pass


class _TerminalOut:
    """The terminal as Textual's writer thread writes to it, without the error once the terminal
    is gone (the operator's SSH session dropped: EIO). That error would end the writer thread, and
    the app's 31st write after it would block the event loop on the thread's full queue before the
    engine could hang the calls up."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._file.write(text)
            except OSError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._file.flush()
            except OSError:
                self.gone = True

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return True


class TerminalDriver(LinuxDriver):
    """Textual's Linux driver, writing through ``_TerminalOut``."""

    def __init__(self, app: App[Any], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        assert self._file is not None, "no stderr to draw on"
        self._file = cast(Any, _TerminalOut(self._file))  # as Textual's WriterThread uses a file
