"""The engine's console socket, which ``aiagent-tui attach`` connects to (as ``asterisk -r`` does to
asterisk.ctl): the operator's view of a headless engine, and its call controls.

A Unix socket, not the health port: it can hang calls up, so only the socket's owner (the
service's user, and root) may connect (directory 0700, socket 0600). HTTP over it, JSON bodies of
the same typed snapshots the terminal app draws from (engine/sessions.py, engine/status.py):

    GET  /view?call=ID       EngineSummary, every CallSummary, the CallSnapshot of ID, its departments
    GET  /events             WebSocket: every SessionEvent as {"type": NAME, "event": {...}}
    POST /calls/ID/hangup    POST /calls/ID/barge-in    POST /calls/ID/transfer {"department": D}
    POST /provider           {"name": P, "call": ID or null}

The view is rendered on request (the console asks a few times a second); the event stream is one
store subscription per console, dropped (with the console told) if the console cannot keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable, get_args

from aiohttp import web
from pydantic import TypeAdapter

from engine.api import EngineView
from runtime.ratelimit import RateLimitedLog, RateLimitFilter
from engine.sessions import CallLog, CallSnapshot, CallSummary, SessionEvent
from engine.status import EngineSummary, ReloadResult

log = logging.getLogger(__name__)

EVENTS: dict[str, TypeAdapter[Any]] = {t.__name__: TypeAdapter(t) for t in get_args(SessionEvent)}
SUMMARY = TypeAdapter(EngineSummary)
CALLS = TypeAdapter(list[CallSummary])
SNAPSHOT = TypeAdapter(CallSnapshot | None)
LOG_BACKLOG = 500  # log lines waiting for one console
RELOAD = TypeAdapter(ReloadResult)


_HANDLER_ERRORS = RateLimitFilter()
RUN_DIR = Path("/run/aiagent-tui")  # the systemd unit's RuntimeDirectory (owned by its User, 0700)


def console_socket(app: str, configured: str = "") -> Path:
    """Where the engine of Stasis app ``app`` listens: ``configured`` (console.socket), else
    /run/aiagent-tui (made by the systemd unit, or by root), else a per-user runtime directory
    ($XDG_RUNTIME_DIR, or the temp dir). The engine and ``attach`` run this same rule."""
    if configured:
        return Path(configured)
    if RUN_DIR.is_dir() or os.geteuid() == 0:
        base = RUN_DIR
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "aiagent-tui"
    else:
        base = Path(tempfile.gettempdir()) / f"aiagent-tui-{os.geteuid()}"
    return base / f"{app}.sock"


def encode_event(event: SessionEvent) -> str:
    name = type(event).__name__
    return f'{{"type": "{name}", "event": {EVENTS[name].dump_json(event).decode()}}}'


# A connection that sends no complete request for this long is closed: a client that connects and
# stalls (half-open, or headers never finished) holds nothing for long. Consoles poll /view a few
# times a second, and a WebSocket in use is not idle.
IDLE_TIMEOUT_S = 10.0


class BadRequest(Exception):
    """A request the console cannot act on: answered 400 with this message."""


class ConsoleServer:
    def __init__(
        self, engine: EngineView, path: Path, reload: Callable[[], Awaitable[ReloadResult]] | None = None, idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.engine = engine
        self.path = path
        self._reload = reload  # the composition root's: it knows the config file
        self.idle_timeout_s = idle_timeout_s
        self.bad_requests = 0
        self._rl = RateLimitedLog(log)
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._log_queues: set[asyncio.Queue[SessionEvent]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_handler = _Forwarder(self._forward)

    async def start(self) -> None:
        """Raises OSError if the socket cannot be made, or if another engine is serving it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            if _answers(self.path):
                raise OSError(f"another engine is serving {self.path}")
            self.path.unlink()  # left by an engine that was killed
        self._loop = asyncio.get_running_loop()
        logging.getLogger().addHandler(self._log_handler)
        # A bug of ours in a handler: aiohttp logs its traceback per request; one per interval is enough.
        logging.getLogger("aiohttp.server").addFilter(_HANDLER_ERRORS)
        app = web.Application(middlewares=[self._bad_requests])
        app.router.add_get("/view", self._view)
        app.router.add_get("/events", self._events)
        app.router.add_post("/calls/{call_id}/{action}", self._call_action)
        app.router.add_post("/provider", self._provider)
        app.router.add_post("/reload", self._reload_config)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=self.idle_timeout_s)
        await self._runner.setup()
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            await web.UnixSite(self._runner, str(self.path)).start()
        finally:
            os.umask(old)

    async def stop(self) -> None:
        logging.getLogger().removeHandler(self._log_handler)
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @web.middleware
    async def _bad_requests(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """A body the console cannot use is the client's fault: 400 with what is wrong, and at most
        one log line per interval (not a traceback per request, forwarded to every console)."""
        try:
            return await handler(request)
        except BadRequest as e:
            self.bad_requests += 1
            self._rl.warning("bad-request", f"console: bad request {request.method} {request.path}: {e}")
            return web.json_response({"ok": False, "error": str(e)}, status=400)

    async def _view(self, request: web.Request) -> web.Response:
        e = self.engine
        call_id = request.query.get("call", "")
        snap = e.store.snapshot(call_id) if call_id else None
        body = (
            f'{{"summary": {SUMMARY.dump_json(e.summary()).decode()}, "calls": {CALLS.dump_json(e.store.summaries()).decode()}, '
            f'"call": {SNAPSHOT.dump_json(snap).decode()}, "departments": {json.dumps(e.departments(call_id) if snap else {})}}}'
        )
        return web.Response(text=body, content_type="application/json")

    async def _events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        sub = self.engine.store.subscribe(2000)
        logs: asyncio.Queue[SessionEvent] = asyncio.Queue(LOG_BACKLOG)
        self._log_queues.add(logs)
        # One pending read of each: the store's events and the engine's forwarded log lines.
        pending: dict[str, asyncio.Future[Any]] = {}
        try:
            reader = asyncio.ensure_future(ws.receive())  # the console closing its end
            while not ws.closed:
                pending.setdefault("events", asyncio.ensure_future(sub.get()))
                pending.setdefault("logs", asyncio.ensure_future(logs.get()))
                done, _ = await asyncio.wait({*pending.values(), reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    break
                for name in ("events", "logs"):
                    if pending[name] in done:
                        await ws.send_str(encode_event(pending.pop(name).result()))
            reader.cancel()
        finally:
            for fut in pending.values():
                fut.cancel()
            sub.close()
            self._log_queues.discard(logs)
            self._sockets.discard(ws)
        return ws

    def _forward(self, record: logging.LogRecord) -> None:
        """A warning or error the engine's modules logged (any thread): to every attached console,
        whose log pane shows it as the app's own would. The store's own lines come as events."""
        if record.name == "engine.sessions" or not self._log_queues or self._loop is None:
            return
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({record.exc_info[1].__class__.__name__}: {record.exc_info[1]}; the engine's log has the traceback)"
        self._loop.call_soon_threadsafe(self._broadcast, CallLog(None, record.levelno, message))

    def _broadcast(self, event: CallLog) -> None:
        for q in self._log_queues:
            if not q.full():  # a console that does not read loses lines, not the engine its memory
                q.put_nowait(event)

    async def _call_action(self, request: web.Request) -> web.Response:
        e, call_id, action = self.engine, request.match_info["call_id"], request.match_info["action"]
        if e.store.snapshot(call_id) is None:
            return web.json_response({"ok": False, "error": f"no call {call_id}"}, status=404)
        if action == "hangup":
            ok = await e.hangup(call_id)
        elif action == "barge-in":
            ok = e.barge_in(call_id)
        elif action == "transfer":
            body = await _json_object(request)
            ok = e.transfer(call_id, str(body.get("department", "")))
        else:
            return web.json_response({"ok": False, "error": f"no action {action}"}, status=404)
        log.info("console: %s on %s: %s", action, call_id, "done" if ok else "refused")
        return web.json_response({"ok": ok})

    async def _reload_config(self, request: web.Request) -> web.Response:
        if self._reload is None:
            return web.json_response({"ok": False, "error": "this engine cannot reload its config"}, status=404)
        result = await self._reload()
        log.info("console: config reload: %s", result.describe())
        return web.Response(text=RELOAD.dump_json(result).decode(), content_type="application/json")

    async def _provider(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        name, call_id = str(body.get("name", "")), body.get("call")
        if name not in self.engine.provider_readiness():
            return web.json_response({"ok": False, "error": f"no provider {name}"}, status=404)
        if call_id:
            return web.json_response({"ok": await self.engine.set_call_provider(str(call_id), name)})
        try:
            await self.engine.set_default_provider(name)
        except Exception as e:  # not ready, or cannot load: refused, said to the console that asked
            return web.json_response({"ok": False, "error": str(e)}, status=409)
        return web.json_response({"ok": True})


class _Forwarder(logging.Handler):
    def __init__(self, forward: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.WARNING)
        self._forward = forward

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._forward(record)
        except Exception:  # the loop is closing: the log file still has it
            pass


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        raise BadRequest(f"the body is not JSON ({e.__class__.__name__})") from None
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(body), "a number")
        raise BadRequest(f"the body is {kind}, not a JSON object")
    return body


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
