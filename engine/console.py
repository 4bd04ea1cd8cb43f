"""The engine's console socket, which ``aiagent-tui attach`` connects to (as ``asterisk -r`` does to
asterisk.ctl): the operator's view of a headless engine, and its call controls.

A Unix socket, not the health port: it can hang calls up, so only the socket's owner (the
service's user, and root) may connect (directory 0700, socket 0600). HTTP over it, JSON bodies of
the same typed snapshots the terminal app draws from (engine/sessions.py, engine/status.py):

    GET  /view?call=ID       EngineSummary, every CallSummary, the CallSnapshot of ID, its departments
    GET  /events             WebSocket: every SessionEvent as {"type": NAME, "event": {...}}
    POST /calls/ID/hangup    POST /calls/ID/barge-in    POST /calls/ID/transfer {"department": D}
    POST /calls/ID/say {"text": T}         the agent says T next
    POST /calls/ID/instruct {"text": T}    T joins the agent's instructions for the rest of the call
    POST /calls/ID/take-over               POST /calls/ID/hand-back
    POST /calls/ID/bring-in {"department": D, "how": "introduce" | "bridge" | "snoop"}
    GET  /calls/ID/audio?side=both|caller|agent
                             WebSocket: the call's audio, and the operator's microphone
    POST /provider           {"name": P, "call": ID or null}

The operator's actions are the engine's own (EngineView), done ``by`` the socket peer's user
(SO_PEERCRED: "NAME (attached)"), which the call's history keeps.

The audio socket carries binary frames both ways, each an ``AudioFrame``: a 4-byte header (the
side, b"c" caller, b"a" agent or b"o" operator, a pad byte, the sample rate as uint16 little
endian), then PCM16 mono. From the engine: 20 ms frames at 8 kHz of the side(s) asked for (the
side "agent" is what the caller hears: the agent, or the operator who took the call over). From
the console: the operator's microphone (any rate, side b"o"), handed to ``operator_audio`` (the
engine plays it to the caller while the call is taken over, and drops it otherwise). One listener
per call per console (a console's second one replaces its first); the consoles share one engine tap
on the call (key ``TAP_KEY``), beside those of other listeners (the terminal app running the engine
may listen too), removed when the last console goes. The socket is closed with a reason when the
call ends, the engine stops, or a newer listener of the same console replaces it.

The view is rendered on request (the console asks a few times a second); the event stream is one
store subscription per console, dropped (with the console told) if the console cannot keep up. A
console that reads audio too slowly loses frames (the oldest first): the engine never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import socket
import stat
import struct
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, cast, get_args

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import TypeAdapter

from engine.api import BringIn, EngineView
from media.audio import Resampler
from media.frames import PCM_FRAME_BYTES, RATE
from runtime.ratelimit import RateLimitedLog, RateLimitFilter
from engine.sessions import CallEnded, CallLog, CallSnapshot, CallSummary, SessionEvent, Subscription
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


# ---- the audio socket's frames (see the module docstring)
AudioSide = Literal["caller", "agent", "operator"]
ListenSide = Literal["both", "caller", "agent"]
_SIDE_CODES: dict[AudioSide, bytes] = {"caller": b"c", "agent": b"a", "operator": b"o"}
_CODE_SIDES = {v: k for k, v in _SIDE_CODES.items()}
_HEADER = struct.Struct("<cxH")
AUDIO_BACKLOG = 50  # frames (20 ms each, both sides together) a listener may be behind before it loses audio
# Why the engine closed an audio socket (the close code; its message says it in words).
CLOSE_CALL_ENDED = WSCloseCode.OK
CLOSE_ENGINE_STOPPING = WSCloseCode.GOING_AWAY
CLOSE_REPLACED = 4000  # the same console opened a newer listener on this call
CLOSE_NO_AUDIO = 4001  # the call has no audio (yet or any more) to listen to
TAP_KEY = "console"  # the consoles' tap among a call's listeners (set_audio_tap's key)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    side: AudioSide
    rate: int
    pcm16: bytes

    def encode(self) -> bytes:
        return _HEADER.pack(_SIDE_CODES[self.side], self.rate) + self.pcm16

    @classmethod
    def decode(cls, data: bytes) -> AudioFrame:
        """Raises ValueError for what is not a frame."""
        if len(data) < _HEADER.size:
            raise ValueError(f"{len(data)} bytes: shorter than the frame header")
        code, rate = _HEADER.unpack_from(data)
        side = _CODE_SIDES.get(code)
        if side is None or rate == 0 or (len(data) - _HEADER.size) % 2:
            raise ValueError(f"not an audio frame (side {code!r}, rate {rate}, {len(data) - _HEADER.size} bytes of PCM16)")
        return cls(side, rate, data[_HEADER.size :])


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a console connection (the kernel's word: SO_PEERCRED)."""

    pid: int
    uid: int

    @property
    def by(self) -> str:
        """The operator as the call's history names them."""
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:  # a uid with no passwd entry (a container's)
            name = f"uid {self.uid}"
        return f"{name} (attached)"


def peer_of(request: web.Request) -> Peer:
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return Peer(pid=0, uid=os.geteuid())  # not over the Unix socket (a test's TCP site): this process's user
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid=pid, uid=uid)


class _Framer:
    """One side of a call's audio as 20 ms frames at 8 kHz, whatever rate and chunk size it comes in."""

    def __init__(self) -> None:
        self._resamplers: dict[int, Resampler] = {}
        self._pending = bytearray()

    def frames(self, pcm16: bytes, rate: int) -> list[bytes]:
        if rate != RATE:
            if rate not in self._resamplers:
                self._resamplers[rate] = Resampler(rate, RATE)
            pcm16 = self._resamplers[rate].process(pcm16)
        self._pending += pcm16
        n = len(self._pending) // PCM_FRAME_BYTES * PCM_FRAME_BYTES
        out = [bytes(self._pending[i : i + PCM_FRAME_BYTES]) for i in range(0, n, PCM_FRAME_BYTES)]
        del self._pending[:n]
        return out


@dataclass(eq=False)
class _Listener:
    """One console's audio socket on a call: the frames waiting to be sent to it."""

    side: ListenSide
    frames: deque[bytes] = field(default_factory=lambda: deque(maxlen=AUDIO_BACKLOG))  # full: the oldest go
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    closing: tuple[int, str] | None = None  # set: close the socket with this code and reason

    def offer(self, side: AudioSide, frame: bytes) -> None:
        """``frame``: an encoded AudioFrame of ``side``."""
        # "agent": what the caller hears (the agent, or the operator who took the call over)
        if self.side != "both" and self.side != ("caller" if side == "caller" else "agent"):
            return
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        self.frames.append(frame)
        self.ready.set()

    def close(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self.ready.set()


class _CallAudio:
    """The consoles' one tap on a call, shared by every console listening to it (keyed by the
    console's pid: one listener per call per console)."""

    def __init__(self) -> None:
        self.listeners: dict[int, _Listener] = {}
        self._framers: dict[AudioSide, _Framer] = {"caller": _Framer(), "agent": _Framer(), "operator": _Framer()}

    def tap(self, source: str, pcm16: bytes, rate: int) -> None:
        """The engine's AudioTap, on its loop: frames the audio once and queues it for each listener."""
        side = next((s for s in self._framers if s == source), None)
        if side is None:
            return
        for pcm in self._framers[side].frames(pcm16, rate):
            frame = AudioFrame(side, RATE, pcm).encode()
            for listener in self.listeners.values():
                listener.offer(side, frame)


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
        self._audio: dict[str, _CallAudio] = {}  # call id -> the consoles listening to it
        self._taken: dict[str, Peer] = {}  # call id -> the console that took it over
        self._stopping = False

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
        app.router.add_get("/calls/{call_id}/audio", self._call_audio)
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
        self._stopping = True
        logging.getLogger().removeHandler(self._log_handler)
        for audio in self._audio.values():
            for listener in audio.listeners.values():
                listener.close(CLOSE_ENGINE_STOPPING, "the engine is stopping")
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
        peer = peer_of(request)
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
            self._console_gone(peer)
        return ws

    def _console_gone(self, peer: Peer) -> None:
        """A console detached (or its SSH session dropped) with calls taken over: the agent takes
        them back rather than leave their callers talking to nobody."""
        for call_id, p in list(self._taken.items()):
            if p != peer:
                continue
            del self._taken[call_id]
            call = self.engine.store.get(call_id)
            if self._stopping or call is None or call.operator != peer.by:
                continue
            ok = self.engine.hand_back(call_id, peer.by)
            log.warning("console: %s went away with call %s taken over: %s", peer.by, call_id, "handed back to the agent" if ok else "hand back refused")

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
        if e.store.get(call_id) is None:
            return web.json_response({"ok": False, "error": f"no call {call_id}"}, status=404)
        peer = peer_of(request)
        by = peer.by
        if action == "hangup":
            ok = await e.hangup(call_id)
        elif action == "barge-in":
            ok = e.barge_in(call_id)
        elif action == "transfer":
            body = await _json_object(request)
            ok = e.transfer(call_id, str(body.get("department", "")))
        elif action == "say":
            ok = e.operator_say(call_id, _text(await _json_object(request)), by)
        elif action == "instruct":
            ok = e.operator_instruct(call_id, _text(await _json_object(request)), by)
        elif action == "take-over":
            if ok := e.take_over(call_id, by):
                self._taken = {c: p for c, p in self._taken.items() if e.store.get(c) is not None}  # ended since
                self._taken[call_id] = peer
        elif action == "hand-back":
            ok = e.hand_back(call_id, by)
            self._taken.pop(call_id, None)
        elif action == "bring-in":
            body = await _json_object(request)
            how = body.get("how")
            if how not in get_args(BringIn):
                raise BadRequest(f"how is {how!r}: one of {', '.join(get_args(BringIn))}")
            ok = e.bring_in(call_id, str(body.get("department", "")), cast(BringIn, how), by)
        else:
            return web.json_response({"ok": False, "error": f"no action {action}"}, status=404)
        log.info("console: %s on %s by %s: %s", action, call_id, by, "done" if ok else "refused")
        return web.json_response({"ok": ok})

    async def _call_audio(self, request: web.Request) -> web.WebSocketResponse | web.Response:
        """The call's audio to the console, the operator's microphone from it (module docstring)."""
        call_id, side = request.match_info["call_id"], request.query.get("side", "both")
        if side not in get_args(ListenSide):
            raise BadRequest(f"side is {side!r}: one of {', '.join(get_args(ListenSide))}")
        if self.engine.store.get(call_id) is None:
            return web.json_response({"ok": False, "error": f"no call {call_id}"}, status=404)
        peer = peer_of(request)
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        audio = self._audio.get(call_id)
        if audio is None:
            audio = _CallAudio()
            if not self.engine.set_audio_tap(call_id, audio.tap, key=TAP_KEY):
                await ws.close(code=CLOSE_NO_AUDIO, message=b"the call has no audio to listen to")
                return ws
            self._audio[call_id] = audio
        listener = _Listener(cast(ListenSide, side))
        if (old := audio.listeners.get(peer.pid)) is not None:
            old.close(CLOSE_REPLACED, "a newer listener of this console took its place")
        audio.listeners[peer.pid] = listener
        self._sockets.add(ws)
        log.info("console: %s listens to %s (%s)", peer.by, call_id, side)
        sub = self.engine.store.subscribe(200)  # for the call's end
        reader = asyncio.ensure_future(ws.receive())
        ended = asyncio.ensure_future(self._ended(sub, call_id))
        try:
            while listener.closing is None:
                ready = asyncio.ensure_future(listener.ready.wait())
                done, _ = await asyncio.wait({ready, reader, ended}, return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                if ended in done:
                    listener.close(CLOSE_CALL_ENDED, "the call ended")
                if reader in done:
                    msg = reader.result()
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    if msg.type is WSMsgType.BINARY:
                        self._operator_audio(call_id, msg.data)
                    reader = asyncio.ensure_future(ws.receive())
                listener.ready.clear()
                while listener.frames and not ws.closed:
                    # A slow console holds up only this loop (the engine's tap just queues, and drops).
                    await ws.send_bytes(listener.frames.popleft())
            if listener.closing is not None and not ws.closed:
                code, reason = listener.closing
                await ws.close(code=code, message=reason.encode())
        except ConnectionError:  # the console went away mid-send
            pass
        finally:
            reader.cancel()
            ended.cancel()
            sub.close()
            self._sockets.discard(ws)
            if audio.listeners.get(peer.pid) is listener:
                del audio.listeners[peer.pid]
            if not audio.listeners and self._audio.get(call_id) is audio:
                del self._audio[call_id]
                self.engine.set_audio_tap(call_id, None, key=TAP_KEY)
            if listener.dropped:
                log.info("console: %s fell behind on %s: %d audio frames dropped", peer.by, call_id, listener.dropped)
        return ws

    async def _ended(self, sub: Subscription, call_id: str) -> None:
        if self.engine.store.get(call_id) is None:
            return  # it ended before the subscription began
        while True:
            ev = await sub.get()
            if isinstance(ev, CallEnded) and ev.call_id == call_id:
                return

    def _operator_audio(self, call_id: str, data: bytes) -> None:
        try:
            frame = AudioFrame.decode(data)
        except ValueError as e:
            self.bad_requests += 1
            self._rl.warning("bad-audio", f"console: bad audio frame on {call_id}: {e}")
            return
        if frame.side == "operator":
            self.engine.operator_audio(call_id, frame.pcm16, frame.rate)

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


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("text is missing: what the agent is to say, or its instruction")
    return text.strip()


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
