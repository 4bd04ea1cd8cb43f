"""The simulated PBX: an ARI server on loopback that behaves like Asterisk 22 (BEHAVIOUR.md).

Every ARI request is validated against Asterisk's own api-docs; every event and resource it
sends is validated against the models. Anything that does not conform is recorded in
``violations`` (and answered 400/501), so a test over the simulator fails on it.

Besides ARI it serves a small control API under /sim/ to place simulated calls and read reports.
"""

from __future__ import annotations

import asyncio
import random
import re
import base64
import json
import logging
import time
import wave
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from media.audio import audioop, wav_bytes
from media.frames import FRAME_S, RATE

from pbxsim.media import (
    Bridge,
    CallerMedia,
    ExternalMediaEndpoint,
    heard_s,
    MediaClock,
    Playback,
    line_noise,
    load_playback_frames,
    load_wav_ulaw,
)
from pbxsim.voice import speak
from pbxsim.schema import AriSpec, Operation, default_spec

log = logging.getLogger("pbxsim")

CAUSE_NORMAL = 16
CAUSE_APP_HANGUP = 32  # ChannelHangupRequest of an app's DELETE: always 32 with soft (BEHAVIOUR.md)
# DELETE /channels/{id}?reason=... -> the Q.850 cause on ChannelDestroyed and HANGUPCAUSE.
HANGUP_CAUSES = {
    "normal": (16, "Normal Clearing"), "busy": (17, "User busy"), "congestion": (34, "Circuit/channel congestion"),
    "no_answer": (19, "No user responding"), "timeout": (18, "No user responding"), "rejected": (21, "Call Rejected"),
    "unallocated": (1, "Unallocated (unassigned) number"), "normal_unspecified": (31, "Normal, unspecified"),
    "number_incomplete": (28, "Invalid number format (addr incomplete)"), "codec_mismatch": (58, "Bearer capability not available"),
    "interworking": (127, "Interworking, unspecified"), "failure": (38, "Network out of order"),
    "answered_elsewhere": (26, "Answered elsewhere"),
}
# The simulated PBX's dialplan: context -> extensions that exist (a transfer into anything else is
# dropped by the PBX at once, as Asterisk does with an invalid extension).
DEFAULT_DIALPLAN: dict[str, set[str]] = {"from-internal": {"0", *(str(n) for n in range(100, 1000))}}
# What an ExternalMedia channel shows as its dialplan application outside Stasis (chan_rtp dials it).
EXTERNAL_MEDIA_APP = ("AppDial2", "(Outgoing Line)")
CLEANUP_GRACE_S = 3.0
KEEP_FINISHED_CALLS = 200  # reports of ended calls kept; older ones go (a --sim demo runs for days)
BRIDGE_WAIT_S = 10.0
DEFAULT_SOUNDS = [Path("/usr/share/asterisk/sounds/en"), Path("/usr/share/asterisk/sounds/en_US_f_Allison")]


def ari_time(t: float | None = None) -> str:
    d = datetime.fromtimestamp(time.time() if t is None else t, tz=timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}+0000"


class AriHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class SimChannel:
    id: str
    name: str
    kind: str  # "caller" or "external"
    media: CallerMedia | ExternalMediaEndpoint
    state: str = "Ring"
    caller_number: str = ""
    caller_name: str = ""
    app: str | None = None
    app_args: list[str] = field(default_factory=list)
    in_stasis: bool = False
    vars: dict[str, str] = field(default_factory=dict)
    bridge: Bridge | None = None
    created: float = field(default_factory=time.time)
    channel_playbacks: list[Playback] = field(default_factory=list)
    context: str = ""  # where in the dialplan the channel is (for a caller: its Stasis() step)
    exten: str = "s"
    priority: int = 1
    # Apps that get the channel's events outside Stasis (applications/{app}/subscription; the app
    # that originated a channel keeps getting them).
    subscribed: set[str] = field(default_factory=set)
    # The dialplan application it ran last, shown while it is not in Stasis (as Asterisk does: a
    # caller's StasisEnd still shows Stasis(); ExternalMedia shows AppDial2 before and after).
    dialplan_app: tuple[str, str] = ("", "")

    def leave_stasis(self) -> None:
        self.dialplan_app = ("Stasis", ",".join([self.app or "", *self.app_args]))
        self.in_stasis = False

    def to_json(self, with_vars: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "protocol_id": "",
            "name": self.name,
            "state": self.state,
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": "Stasis" if self.in_stasis else self.dialplan_app[0],
                "app_data": ",".join([self.app or "", *self.app_args]) if self.in_stasis else self.dialplan_app[1],
            },
            "creationtime": ari_time(self.created),
            "language": "en",
        }
        if with_vars:
            d["channelvars"] = dict(self.vars)
        return d


@dataclass(frozen=True)
class Broadcast:
    """The dialplan runs StasisBroadcast(timeout_ms, app_filter) instead of Stasis(app)."""

    timeout_ms: int = 500
    app_filter: str = ""  # a regular expression on app names ("": every connected app)


@dataclass
class _BroadcastState:
    apps: list[str]  # the apps that got CallBroadcast
    winner: str | None = None
    expired: bool = False  # nobody claimed in time: the dialplan went on
    claimed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Say:
    wav: str


@dataclass(frozen=True)
class SayText:
    """Say ``text`` in a synthesized human voice (Piper; pbxsim/voice.py), ``gain_db`` louder
    (negative: a voice in the background, or crosstalk on the line)."""

    text: str
    gain_db: float = 0.0


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class WaitAgent:
    """Wait until the caller has heard ``seconds`` of agent audio since the last step (timeout: give up)."""

    seconds: float
    timeout_s: float = 15.0


@dataclass(frozen=True)
class WaitAgentDone:
    """Wait until the agent has spoken and then been quiet for ``quiet_s``."""

    quiet_s: float = 0.5
    timeout_s: float = 15.0


@dataclass(frozen=True)
class Dtmf:
    """Press keys: each ``digits`` key held ``duration_ms`` (the event comes when it is released)."""

    digits: str
    duration_ms: int = 120


Step = Say | SayText | Pause | WaitAgent | WaitAgentDone | Dtmf


@dataclass(frozen=True)
class Line:
    """The caller's phone line: ``noise_dbfs`` set means the phone sends line noise at that level all
    the time (as most phones do); None means it sends nothing in silence (DTX, Local channels).
    ``rate`` 16000 is a wideband phone (slin16)."""

    noise_dbfs: float | None = None
    rate: int = 8000


def parse_script(items: list[dict[str, Any]]) -> list[Step]:
    steps: list[Step] = []
    for it in items:
        if "say" in it:
            steps.append(Say(str(it["say"])))
        elif "say_text" in it:
            steps.append(SayText(str(it["say_text"]), float(it.get("gain_db", 0.0))))
        elif "pause" in it:
            steps.append(Pause(float(it["pause"])))
        elif "wait_agent" in it:
            steps.append(WaitAgent(float(it["wait_agent"]), float(it.get("timeout_s", 15.0))))
        elif "dtmf" in it:
            steps.append(Dtmf(str(it["dtmf"]), int(it.get("duration_ms", 120))))
        elif "wait_agent_done" in it:
            steps.append(WaitAgentDone(float(it["wait_agent_done"]), float(it.get("timeout_s", 15.0))))
        else:
            raise ValueError(f"unknown script step {it!r}")
    return steps


async def spoken(step: Say | SayText, load: Callable[[str], bytes]) -> bytes:
    """What a Say or SayText step says, as 8 kHz u-law (``load`` reads a WAV)."""
    if isinstance(step, Say):
        return load(step.wav)
    speech = await asyncio.to_thread(speak, step.text)
    if step.gain_db:
        speech = audioop.lin2ulaw(audioop.mul(audioop.ulaw2lin(speech, 2), 2, 10 ** (step.gain_db / 20)), 2)
    return speech


async def wait_step(step: Pause | WaitAgent | WaitAgentDone, alive: Callable[[], bool], agent_frames: list[tuple[float, bytes]]) -> None:
    """A caller's pause or wait for the agent, on what it hears (``agent_frames``: arrival time,
    audio); over when the call is (``alive`` false)."""
    since = time.monotonic()
    if isinstance(step, Pause):
        end = since + step.seconds
        while alive() and time.monotonic() < end:
            await asyncio.sleep(0.01)
    elif isinstance(step, WaitAgent):
        end = since + step.timeout_s
        while alive() and time.monotonic() < end and heard_s(agent_frames, since) < step.seconds:
            await asyncio.sleep(0.01)
    else:
        end = since + step.timeout_s
        while alive() and time.monotonic() < end:
            heard = agent_frames and agent_frames[-1][0] >= since
            if heard and time.monotonic() - agent_frames[-1][0] >= step.quiet_s:
                break
            await asyncio.sleep(0.01)


@dataclass
class CallRecord:
    """What happened to one simulated call, for the report."""

    id: str
    caller_number: str
    script: list[Step]
    accepted: bool = True
    answered: bool = False
    bridged: bool = False
    external_media: str | None = None
    bridge_id: str | None = None
    dialled: str = "s"
    ended_by: str | None = None
    ended_at: float | None = None
    hangup_cause: int | None = None
    left_stasis: str | None = None  # how: "continue to EXT@CONTEXT", "redirect to TECH/RES", "move to APP"
    left_stasis_at: float | None = None  # monotonic
    transferred_to: str | None = None  # where the caller went and was connected
    hangup_clean: bool | None = None
    error: str | None = None
    media: CallerMedia | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    placed_at: float = field(default_factory=time.monotonic)

    def report(self, pbx: SimPBX) -> dict[str, Any]:
        ext = pbx.external_endpoints.get(self.external_media or "")
        m = self.media
        ch = pbx.channels.get(self.id)
        return {
            "id": self.id,
            "caller_number": self.caller_number,
            "accepted": self.accepted,
            "answered": self.answered,
            "bridged": self.bridged,
            "external_media": self.external_media is not None,
            "external_media_channel": self.external_media,
            "rtp_sent": ext.packets_sent if ext else 0,
            "rtp_received": ext.packets_received if ext else 0,
            "caller_frames_sent": m.frames_sent if m else 0,
            "agent_audio_seconds": m.agent_audio_seconds if m else 0.0,
            # From dialling to the first agent audio the caller heard (the greeting, usually).
            "first_agent_audio_s": round(m.agent_frames[0][0] - self.placed_at, 3) if m and m.agent_frames else None,
            "barge_in_reactions_s": m.barge_in_reactions() if m else [],
            "turn_latencies_s": m.turn_latencies() if m else [],
            "transcript": (pbx.final_vars.get(self.id) or (ch.vars if ch else {})).get("AIAGENT_TRANSCRIPT"),
            "dialled": self.dialled,
            "left_stasis": self.left_stasis,
            "transferred_to": self.transferred_to,
            "ended_by": self.ended_by,
            "hangup_cause": self.hangup_cause,
            "hangup_clean": self.hangup_clean,
            "error": self.error,
            "done": self.finished.is_set(),
            "duration_s": round((self.ended_at or time.monotonic()) - self.placed_at, 3),
        }


@dataclass
class Faults:
    """What a hostile PBX or a flaky network does, on demand (tests and bench/faults.py).

    Keys are api-docs operation keys, e.g. ``channels.externalMedia``, ``bridges.destroy``."""

    # op -> (HTTP status, raw body, how many times): answer with this instead of the real reply
    # (the operation is still carried out, as when a proxy mangles Asterisk's answer).
    bad_replies: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # op -> seconds: once the operation is answered, close every events WebSocket and refuse new
    # ones for that long (what is emitted meanwhile is lost, as on a real Asterisk).
    drop_ws_after: dict[str, float] = field(default_factory=dict)
    drop_ws_count: dict[str, int] = field(default_factory=dict)  # op -> how many more times (absent: always)
    # op -> seconds to wait before answering.
    delays: dict[str, float] = field(default_factory=dict)
    # The network loses every Nth RTP packet on the way to the engine (0: none), on ExternalMedia
    # channels created from then on.
    rtp_loss_every: int = 0
    # Bytes of a text frame sent first on every events WebSocket (0: none): more than a client
    # takes in one message (aiohttp's limit is 4 MiB), as a broken proxy or ARI might send.
    oversize_frame_bytes: int = 0

    def take_bad_reply(self, op: str) -> tuple[int, str] | None:
        spec = self.bad_replies.get(op)
        if spec is None:
            return None
        status, body, n = spec
        if n <= 1:
            del self.bad_replies[op]
        else:
            self.bad_replies[op] = (status, body, n - 1)
        return status, body

    def take_drop(self, op: str) -> float | None:
        seconds = self.drop_ws_after.get(op)
        if seconds is None:
            return None
        left = self.drop_ws_count.get(op)
        if left is not None:
            if left <= 1:
                del self.drop_ws_after[op], self.drop_ws_count[op]
            else:
                self.drop_ws_count[op] = left - 1
        return seconds


class AppSocket:
    """One events WebSocket; a writer task keeps events in order without blocking the PBX."""

    def __init__(self, ws: web.WebSocketResponse, apps: list[str]) -> None:
        self.ws = ws
        self.apps = apps
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.replaced: set[str] = set()

    async def writer(self) -> None:
        while (item := await self.queue.get()) is not None:
            try:
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError):
                return


class SimPBX:
    def __init__(
        self,
        app_names: list[str] | None = None,
        username: str = "aiagent",
        password: str = "",
        rtp_host: str = "127.0.0.1",
        rtp_start: int = 20000,
        rtp_end: int = 20998,
        sounds_dirs: list[Path] | None = None,
        spec: AriSpec | None = None,
        seed: int | None = None,
    ) -> None:
        self.spec = spec or default_spec()
        self.rng = random.Random(seed)  # the bridges' echo timing (see BridgePlayer)
        self.username = username
        self.password = password
        self.rtp_host = rtp_host
        self.rtp_start = rtp_start
        self.rtp_end = rtp_end
        self.sounds_dirs = sounds_dirs or DEFAULT_SOUNDS
        self.channels: dict[str, SimChannel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.bridge_apps: dict[str, str] = {}
        self.playbacks: dict[str, tuple[Playback, Bridge | SimChannel]] = {}
        self.external_endpoints: dict[str, ExternalMediaEndpoint] = {}
        self.calls: dict[str, CallRecord] = {}
        self.final_vars: dict[str, dict[str, str]] = {}
        self.sockets: dict[str, AppSocket] = {}  # app -> newest socket
        self.all_sockets: set[AppSocket] = set()
        self.violations: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (operation key, path), in order
        self.port_exhaustion_events = 0
        self.clock = MediaClock()
        self._used_ports: set[int] = set()
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.block_websockets_until = 0.0
        self.drop_event_types: set[str] = set()  # events "lost" on purpose, to test timeouts
        self.broadcasts: dict[str, _BroadcastState] = {}  # StasisBroadcast() calls by channel id
        self.faults = Faults()
        self._speech_cache: dict[str, bytes] = {}
        self.dialplan: dict[str, set[str]] = {k: set(v) for k, v in DEFAULT_DIALPLAN.items()}

    # ---- lifecycle
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/ari/events", self._events_ws)
        app.router.add_route("*", "/ari/{tail:.*}", self._ari)
        app.router.add_post("/sim/calls", self._sim_place_call)
        app.router.add_get("/sim/calls", self._sim_list_calls)
        app.router.add_get("/sim/calls/{id}", self._sim_get_call)
        app.router.add_get("/sim/calls/{id}/recording.wav", self._sim_recording)
        app.router.add_post("/sim/calls/{id}/hangup", self._sim_hangup)
        app.router.add_post("/sim/calls/{id}/dtmf", self._sim_dtmf)
        app.router.add_get("/sim/state", self._sim_state)
        app.router.add_post("/sim/websockets/drop", self._sim_drop_ws)
        app.router.add_post("/sim/faults", self._sim_faults)
        app.router.add_post("/sim/events/raw", self._sim_raw_event)
        app.router.add_post("/sim/calls/{id}/forge", self._sim_forge)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8088) -> None:
        self.clock.start()
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("simulated Asterisk ARI on http://%s:%d/ari", host, self.port)

    async def stop(self) -> None:
        self.clock.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in list(self.all_sockets):
            s.queue.put_nowait(None)
            await s.ws.close()
        for ep in self.external_endpoints.values():
            ep.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _new_id(self) -> str:
        self._seq += 1
        return f"{int(self.started)}.{self._seq}"

    # ---- auth
    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith("/ari"):
            user, pw = None, None
            header = request.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            elif "api_key" in request.query:
                user, _, pw = request.query["api_key"].partition(":")
            if (user, pw) != (self.username, self.password):
                return web.json_response({"error": "Authentication required"}, status=401)
        return await handler(request)

    # ---- events
    def emit(self, app: str | None, event: dict[str, Any]) -> None:
        if app is None:
            return
        event = {**event, "application": app, "timestamp": ari_time(), "asterisk_id": "00:00:00:00:00:01"}
        self.violations.extend(self.spec.validate_event(event))
        sock = self.sockets.get(app)
        if sock is None or app in sock.replaced or event["type"] in self.drop_event_types:
            return  # missed events are never replayed
        sock.queue.put_nowait(json.dumps(event))

    def channel_event(self, ch: SimChannel, event: dict[str, Any]) -> None:
        """A channel's event: to its app while it is in Stasis, and to every app subscribed to it."""
        apps = set(ch.subscribed)
        if ch.in_stasis and ch.app:
            apps.add(ch.app)
        for app in sorted(apps):
            self.emit(app, event)

    async def _events_ws(self, request: web.Request) -> web.StreamResponse:
        match = self.spec.match("GET", "/events")
        assert match is not None
        errors = self.spec.validate_request(match[0], request.query, None)
        if errors:
            self.violations.extend(errors)
            return web.json_response({"message": "; ".join(errors)}, status=400)
        if time.monotonic() < self.block_websockets_until:
            return web.json_response({"message": "service unavailable"}, status=503)
        apps = [a for a in request.query["app"].split(",") if a]
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        sock = AppSocket(ws, apps)
        if self.faults.oversize_frame_bytes:
            sock.queue.put_nowait("x" * self.faults.oversize_frame_bytes)
        writer = asyncio.ensure_future(sock.writer())
        for app in apps:
            old = self.sockets.get(app)
            if old is not None:
                # The newest socket gets everything; the older one hears once that it was replaced.
                old.queue.put_nowait(
                    json.dumps({"type": "ApplicationReplaced", "application": app, "timestamp": ari_time(), "asterisk_id": "00:00:00:00:00:01"})
                )
                old.replaced.add(app)
            self.sockets[app] = sock
        self.all_sockets.add(sock)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.all_sockets.discard(sock)
            for app in apps:
                if self.sockets.get(app) is sock:
                    del self.sockets[app]
            sock.queue.put_nowait(None)
            await writer
        return ws

    def send_raw(self, app: str, text: str) -> bool:
        """A text frame exactly as given (not checked against the spec) on the app's socket."""
        sock = self.sockets.get(app)
        if sock is None:
            return False
        sock.queue.put_nowait(text)
        return True

    def app_active(self, app: str) -> bool:
        s = self.sockets.get(app)
        return s is not None and app not in s.replaced

    # ---- ARI dispatch
    async def _ari(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        matched = self.spec.match(request.method, path)
        if matched is None:
            msg = f"{request.method} /ari{path}: no such operation in api-docs"
            self.violations.append(msg)
            return web.json_response({"message": "Invalid method" if self.spec.path_exists(path) else "Resource not found"}, status=405 if self.spec.path_exists(path) else 404)
        op, path_params = matched
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                self.violations.append(f"{op.key}: request body is not JSON")
                return web.json_response({"message": "body is not JSON"}, status=400)
        errors = self.spec.validate_request(op, request.query, body)
        self.requests.append((op.key, path))
        if errors:
            self.violations.extend(errors)
            return web.json_response({"message": "; ".join(errors)}, status=400)
        handler = getattr(self, "op_" + op.key.replace(".", "_"), None)
        if handler is None:
            self.violations.append(f"{op.key}: the simulator does not implement this operation")
            return web.json_response({"message": "Not implemented"}, status=501)
        delay = self.faults.delays.get(op.key)
        if delay:
            await asyncio.sleep(delay)
        try:
            outcome = handler(path_params, request.query, body)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            status, result = outcome
            drop = self.faults.take_drop(op.key)
            if drop is not None:
                self.block_websockets_until = time.monotonic() + drop
                self._spawn(self.drop_websockets())
            bad = self.faults.take_bad_reply(op.key)
            if bad is not None:
                return web.Response(status=bad[0], text=bad[1], content_type="application/json")
        except AriHttpError as e:
            if e.status not in op.error_codes and e.status not in (400, 500):
                self.violations.append(f"{op.key}: simulator answered {e.status}, not a documented error")
            return web.json_response({"message": e.message}, status=e.status)
        if status == 204:
            return web.Response(status=204)
        self._check_response(op, result)
        return web.json_response(result, status=status)

    def _check_response(self, op: Operation, result: Any) -> None:
        rc = op.response_class
        if rc.startswith("List["):
            for i, item in enumerate(result):
                self.violations.extend(self.spec.validate_model(rc[5:-1], item, f"{op.key} response[{i}]"))
        elif rc not in ("void", "binary"):
            self.violations.extend(self.spec.validate_model(rc, result, f"{op.key} response"))

    # ---- lookups
    def _channel(self, cid: str, status: int = 404) -> SimChannel:
        ch = self.channels.get(cid)
        if ch is None:
            raise AriHttpError(status, "Channel not found")
        return ch

    def _bridge(self, bid: str) -> Bridge:
        b = self.bridges.get(bid)
        if b is None:
            raise AriHttpError(404, "Bridge not found")
        return b

    def bridge_json(self, b: Bridge) -> dict[str, Any]:
        return {
            "id": b.id,
            "technology": b.technology,
            "bridge_type": b.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": b.name,
            "channels": [self._member_id(m) for m in b.members],
            "video_mode": "talker",
            "creationtime": ari_time(b.created),
        }

    def _member_id(self, media: Any) -> str:
        for ch in self.channels.values():
            if ch.media is media:
                return ch.id
        return ""

    def playback_json(self, pb: Playback) -> dict[str, Any]:
        return {"id": pb.id, "media_uri": pb.media_uri, "target_uri": pb.target_uri, "language": "en", "state": pb.state}

    # ---- asterisk / applications
    def op_asterisk_getInfo(self, pp, q, body):
        return 200, {
            "system": {"version": "22.10.1 (aiagent-sim)", "entity_id": "00:00:00:00:00:01"},
            "build": {"os": "Linux", "kernel": "sim", "options": "", "machine": "x86_64", "date": "2026-01-01", "user": "sim"},
            "status": {"startup_time": ari_time(self.started), "last_reload_time": ari_time(self.started)},
            "config": {"name": "aiagent-sim", "default_language": "en", "setid": {"user": "asterisk", "group": "asterisk"}},
        }

    def op_asterisk_ping(self, pp, q, body):
        return 200, {"asterisk_id": "00:00:00:00:00:01", "ping": "pong", "timestamp": ari_time()}

    def op_applications_list(self, pp, q, body):
        return 200, [self._app_json(a) for a in self.sockets]

    def op_applications_get(self, pp, q, body):
        if pp["applicationName"] not in self.sockets:
            raise AriHttpError(404, "Application not found")
        return 200, self._app_json(pp["applicationName"])

    def _event_source(self, pp, q) -> tuple[str, SimChannel]:
        app = pp["applicationName"]
        if app not in self.sockets:
            raise AriHttpError(404, "Application not found")
        kind, _, cid = q["eventSource"].partition(":")
        if kind != "channel":
            raise AriHttpError(400, "only channel: event sources are simulated")
        ch = self.channels.get(cid)
        if ch is None:
            raise AriHttpError(422, "Event source does not exist")
        return app, ch

    def op_applications_subscribe(self, pp, q, body):
        app, ch = self._event_source(pp, q)
        ch.subscribed.add(app)
        return 200, self._app_json(app)

    def op_applications_unsubscribe(self, pp, q, body):
        app, ch = self._event_source(pp, q)
        if app not in ch.subscribed:
            raise AriHttpError(409, "Application not subscribed to event source")
        ch.subscribed.discard(app)
        return 200, self._app_json(app)

    def _app_json(self, app: str) -> dict[str, Any]:
        chans = [c.id for c in self.channels.values() if c.app == app and c.in_stasis]
        bridges = [b for b, a in self.bridge_apps.items() if a == app]
        return {"name": app, "channel_ids": chans, "bridge_ids": bridges, "endpoint_ids": [], "device_names": [], "events_allowed": [], "events_disallowed": []}

    # ---- channels
    def op_channels_list(self, pp, q, body):
        return 200, [c.to_json() for c in self.channels.values()]

    def op_channels_get(self, pp, q, body):
        return 200, self._channel(pp["channelId"]).to_json()

    def op_channels_answer(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        if ch.state != "Up":
            ch.state = "Up"
            rec = self.calls.get(ch.id)
            if rec:
                rec.answered = True
            self.emit(ch.app, {"type": "ChannelStateChange", "channel": ch.to_json()})
        return 204, None

    def op_channels_hangup(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        if "reason" in q and "reason_code" in q:
            raise AriHttpError(400, "The reason and reason_code can't both be specified")
        if "reason_code" in q:
            if not q["reason_code"].isdigit():
                raise AriHttpError(400, "Invalid reason for hangup reason code provided")
            cause = (int(q["reason_code"]), "")
        else:
            cause = HANGUP_CAUSES.get(q.get("reason", "normal"))  # type: ignore[assignment]
            if cause is None:
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
        self.hangup_channel(ch, by="ari", cause=cause[0])
        return 204, None

    def op_channels_continueInDialplan(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        if "label" in q:
            # The simulated dialplan has no labels (BEHAVIOUR.md: an unknown one is a 404).
            raise AriHttpError(400 if q["label"] == "0" else 404, "Requested priority is illegal" if q["label"] == "0" else "Requested label can not be found")
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        rec = self.calls.get(ch.id)
        target = (q.get("context") or ch.context, q.get("extension") or ch.exten, int(q.get("priority", 0) or 0))
        explicit = "context" in q or "extension" in q or "priority" in q
        if ch.bridge is not None:
            self.channel_event(ch, {"type": "ChannelVarset", "variable": "BRIDGEPEER", "value": "", "channel": ch.to_json()})
        self._leave_bridge(ch)
        ch.leave_stasis()
        ch.vars["STASISSTATUS"] = "SUCCESS"
        self.emit(ch.app, {"type": "StasisEnd", "channel": ch.to_json()})
        loop = asyncio.get_running_loop()
        if not explicit:
            # Resumes after Stasis(); the simulated dialplan has nothing there: the call ends.
            loop.call_later(0.05, self.hangup_channel, ch, "dialplan")
            return 204, None
        # Asterisk's goto: one priority before the target's, the dialplan loop steps onto it.
        ch.context, ch.exten, ch.priority = target[0], target[1], (target[2] or 1) - 1
        where = f"{ch.exten}@{ch.context}"
        if rec is not None:
            rec.left_stasis, rec.left_stasis_at = f"continue to {where}", time.monotonic()
        if ch.exten in self.dialplan.get(ch.context, set()):
            # The target answers; the caller talks to it (the engine hears nothing more).
            loop.call_later(0.001, self._in_dialplan, ch, "Dial", f"Local/{where}")
            if rec is not None:
                rec.transferred_to = where
        else:
            # Asterisk does not check the target: the PBX drops the caller at once.
            log.warning("channel %s sent to invalid extension %s", ch.id, where)
            loop.call_later(0.001, lambda: self.hangup_channel(ch, "dialplan", invalid_extension=True))
        return 204, None

    def _in_dialplan(self, ch: SimChannel, app: str, data: str) -> None:
        if self.channels.get(ch.id) is ch:
            ch.dialplan_app = (app, data)
            ch.priority += 1
            self.channel_event(ch, {"type": "ChannelDialplan", "dialplan_app": app, "dialplan_app_data": data, "channel": ch.to_json()})

    def op_channels_redirect(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        endpoint = q["endpoint"]
        tech, sep, resource = endpoint.partition("/")
        if not sep:
            raise AriHttpError(422, f"Endpoint parameter '{endpoint}' does not contain tech/resource")
        if not resource:
            raise AriHttpError(422, "No resource provided in endpoint parameter")
        ch_tech = ch.name.split("/", 1)[0]
        if tech.lower() != ch_tech.lower():
            raise AriHttpError(422, f"Endpoint technology '{tech}' does not match channel technology '{ch_tech}'")
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        rec = self.calls.get(ch.id)
        if rec is not None:
            rec.left_stasis, rec.left_stasis_at = f"redirect to {endpoint}", time.monotonic()
        if ch_tech == "Local":
            log.info("NOTICE: Unsupported transfer requested on %s", ch.name)  # nothing happens
            return 204, None
        # As an IAX2 caller measured: its far end transfers its party; the channel here ends.
        if rec is not None:
            rec.transferred_to = endpoint
        asyncio.get_running_loop().call_later(0.006, self.hangup_channel, ch, "transfer")
        return 204, None

    def op_channels_move(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        args = [a for a in q.get("appArgs", "").split(",") if a]
        if not self.app_active(q["app"]):
            self.emit(ch.app, {"type": "ApplicationMoveFailed", "destination": q["app"], "args": args, "channel": ch.to_json()})
            return 204, None
        old = ch.app
        ch.leave_stasis()
        self.emit(old, {"type": "StasisEnd", "channel": ch.to_json()})
        # The caller stays in the old app's bridge until it is put elsewhere (BEHAVIOUR.md).
        ch.app, ch.app_args, ch.in_stasis = q["app"], args, True
        rec = self.calls.get(ch.id)
        if rec is not None:
            rec.left_stasis, rec.left_stasis_at = f"move to {q['app']}", time.monotonic()
        self.emit(ch.app, {"type": "StasisStart", "args": args, "channel": ch.to_json()})
        return 204, None

    def op_channels_getChannelVar(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        name = q["variable"]
        if name.upper().startswith("TALK_DETECT("):
            raise AriHttpError(500, "Unable to read provided function")  # write-only (BEHAVIOUR.md)
        if name not in ch.vars:
            raise AriHttpError(404, "Provided variable was not found")
        return 200, {"value": ch.vars[name]}

    def op_channels_setChannelVar(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        ch.vars[q["variable"]] = q.get("value", "")
        return 204, None

    def op_channels_rtpstatistics(self, pp, q, body):
        self._channel(pp["channelId"])
        raise AriHttpError(404, "RTP info not found")  # ExternalMedia has none (BEHAVIOUR.md)

    def op_channels_sendDTMF(self, pp, q, body):
        ch = self._channel(pp["channelId"])
        self._spawn(self.press_keys(ch, q.get("dtmf", ""), int(q.get("duration", 100))))
        return 204, None

    async def press_keys(self, ch: SimChannel, digits: str, duration_ms: int) -> None:
        """The caller presses keys: one ChannelDtmfReceived per digit, when it is released."""
        for d in digits:
            await asyncio.sleep(duration_ms / 1000)
            if self.channels.get(ch.id) is not ch:
                return
            self.channel_event(ch, {"type": "ChannelDtmfReceived", "digit": d, "duration_ms": duration_ms, "channel": ch.to_json()})
            await asyncio.sleep(0.08)  # the gap between two key presses

    async def op_channels_externalMedia(self, pp, q, body):
        return await self._external_media(q, body)

    async def _external_media(self, q, body):
        if q.get("encapsulation", "rtp") != "rtp" or q.get("transport", "udp") != "udp":
            raise AriHttpError(400, "only RTP over UDP is simulated")
        if q["format"] != "ulaw":
            raise AriHttpError(400, f"format {q['format']} is not simulated (ulaw is)")
        host = q.get("external_host")
        if not host or ":" not in host:
            raise AriHttpError(400, "external_host must be host:port")
        rhost, _, rport = host.rpartition(":")
        cid = q.get("channelId") or self._new_id()
        if cid in self.channels:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        ep = ExternalMediaEndpoint((rhost, int(rport)), self.clock, loss_every=self.faults.rtp_loss_every)
        port = await self._open_rtp_port(ep)
        # The app that originated it keeps getting its events after Stasis (BEHAVIOUR.md).
        # Down in the reply, Up at its StasisStart; named after chan_rtp's object address.
        ch = SimChannel(cid, f"UnicastRTP/{host}-0x7f{random.getrandbits(40):010x}", "external", ep, state="Down", app=q["app"],
                        subscribed={q["app"]}, context="default", dialplan_app=EXTERNAL_MEDIA_APP)
        ch.vars["UNICASTRTP_LOCAL_ADDRESS"] = self.rtp_host
        ch.vars["UNICASTRTP_LOCAL_PORT"] = str(port)
        self.channels[cid] = ch
        self.external_endpoints[cid] = ep
        # The response goes out about 1 ms before the channel is in Stasis (BEHAVIOUR.md).
        asyncio.get_running_loop().call_later(0.001, self._enter_stasis, ch)
        return 200, ch.to_json(with_vars=True)

    async def _open_rtp_port(self, ep: ExternalMediaEndpoint) -> int:
        for port in range(self.rtp_start, self.rtp_end + 1, 2):
            if port in self._used_ports:
                continue
            try:
                await ep.open(self.rtp_host, port)
            except OSError:
                continue
            self._used_ports.add(port)
            return port
        # A real Asterisk 22.10.1 segfaults here (BEHAVIOUR.md); the simulator says so instead.
        self.port_exhaustion_events += 1
        log.error("RTP port range %d-%d exhausted: a real Asterisk 22.10.1 would crash now", self.rtp_start, self.rtp_end)
        raise AriHttpError(500, "RTP port range exhausted (Asterisk 22.10.1 crashes here)")

    def _enter_stasis(self, ch: SimChannel) -> None:
        if ch.id in self.channels:
            ch.state = "Up"
            ch.in_stasis = True
            self.emit(ch.app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})

    def op_channels_play(self, pp, q, body):
        return self._play_on_channel(pp["channelId"], q.get("playbackId") or self._new_id(), q)

    def op_channels_playWithId(self, pp, q, body):
        return self._play_on_channel(pp["channelId"], pp["playbackId"], q)

    def _play_on_channel(self, cid: str, pid: str, q):
        ch = self._channel(cid)
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        pb = self._make_playback(pid, q["media"], f"channel:{cid}")
        ch.channel_playbacks.append(pb)
        self.playbacks[pid] = (pb, ch)
        self._spawn(self._run_channel_playback(ch, pb))
        return 201, self.playback_json(pb)

    async def _run_channel_playback(self, ch: SimChannel, pb: Playback) -> None:
        # Heard by the caller only, never mixed into ExternalMedia; mutes the caller on the bridge.
        media = ch.media
        if pb.frames is None:
            # Started, then at once failed (a missing file); an unknown scheme never finishes.
            pb.state = "playing"
            self._playback_event(pb, "started")
            if not pb.never_finishes:
                pb.state = "failed"
                self._playback_event(pb, "finished")
            return
        pb.state = "playing"
        self._playback_event(pb, "started")
        if isinstance(media, CallerMedia):
            media.muted = True
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            held = 0  # frames of pause, which push the rest of the file later
            while pb.state in ("playing", "paused"):
                if pb.state == "paused":
                    held += 1
                else:
                    f = pb.next_frame()
                    if f is None:
                        break
                    media.deliver(f, True, self.clock.tick)
                await asyncio.sleep(max(0.0, t0 + (pb.pos + held) * FRAME_S - loop.time()))
        finally:
            if isinstance(media, CallerMedia):
                media.muted = False
            if pb.state == "playing":
                pb.state = "done"
                self._playback_event(pb, "finished")

    def _make_playback(self, pid: str, media_uri: str, target: str) -> Playback:
        uri = media_uri.split(",")[0]
        frames, never = load_playback_frames(uri, self.sounds_dirs)
        return Playback(pid, uri, target, frames, never)

    def _playback_event(self, pb: Playback, what: str) -> None:
        kind, _, target = pb.target_uri.partition(":")
        app = self.bridge_apps.get(target) if kind == "bridge" else (self.channels[target].app if target in self.channels else None)
        self.emit(app, {"type": "PlaybackStarted" if what == "started" else "PlaybackFinished", "playback": self.playback_json(pb)})
        if what == "finished":
            self.playbacks.pop(pb.id, None)

    # ---- bridges
    def op_bridges_list(self, pp, q, body):
        return 200, [self.bridge_json(b) for b in self.bridges.values()]

    def op_bridges_get(self, pp, q, body):
        return 200, self.bridge_json(self._bridge(pp["bridgeId"]))

    def op_bridges_create(self, pp, q, body):
        return self._create_bridge(q.get("bridgeId") or self._new_id(), q)

    def op_bridges_createWithId(self, pp, q, body):
        return self._create_bridge(pp["bridgeId"], q)

    def _create_bridge(self, bid: str, q):
        if bid in self.bridges:
            raise AriHttpError(409, "Bridge with this ID already exists")
        b = Bridge(bid, q.get("name", ""), q.get("type", "mixing").split(",")[0], self._playback_event, random.Random(self.rng.random()))
        self.bridges[bid] = b
        self.clock.bridges[bid] = b
        self.bridge_apps[bid] = ""  # its events go to the app of the channels that join it
        return 200, self.bridge_json(b)

    def op_bridges_destroy(self, pp, q, body):
        b = self._bridge(pp["bridgeId"])
        for ch in [c for c in self.channels.values() if c.bridge is b]:
            self._leave_bridge(ch)
        for pb in list(b.playbacks):
            b.playbacks.remove(pb)
            pb.state = "failed"
            self._playback_event(pb, "finished")
        del self.bridges[b.id]
        self.clock.bridges.pop(b.id, None)
        self.emit(self.bridge_apps.pop(b.id, None) or None, {"type": "BridgeDestroyed", "bridge": self.bridge_json(b)})
        return 204, None

    def op_bridges_addChannel(self, pp, q, body):
        b = self._bridge(pp["bridgeId"])
        chans = [self._channel(c, status=400) for c in q["channel"].split(",")]
        for ch in chans:
            if not ch.in_stasis:
                raise AriHttpError(422, "Channel not in Stasis application")
            if ch.bridge is not None and ch.bridge is not b:
                raise AriHttpError(409, "Channel is already in a bridge")
        for ch in chans:
            if ch.bridge is b:
                self._leave_bridge(ch)  # added again: Asterisk takes it out and puts it back
            ch.bridge = b
            ch.media.bridge = b
            b.add(ch.media)
            if not self.bridge_apps.get(b.id):
                self.bridge_apps[b.id] = ch.app or ""
            self.emit(ch.app, {"type": "ChannelEnteredBridge", "bridge": self.bridge_json(b), "channel": ch.to_json()})
        self._note_bridged(b)
        return 204, None

    def op_bridges_removeChannel(self, pp, q, body):
        b = self._bridge(pp["bridgeId"])
        for cid in q["channel"].split(","):
            ch = self._channel(cid, status=400)
            if ch.bridge is not b:
                raise AriHttpError(422, "Channel not in this bridge")
            self._leave_bridge(ch)
        return 204, None

    def op_bridges_play(self, pp, q, body):
        return self._play_on_bridge(pp["bridgeId"], q.get("playbackId") or self._new_id(), q)

    def op_bridges_playWithId(self, pp, q, body):
        return self._play_on_bridge(pp["bridgeId"], pp["playbackId"], q)

    def _play_on_bridge(self, bid: str, pid: str, q):
        b = self._bridge(bid)
        # Asterisk accepts a duplicate id while the first still plays (BEHAVIOUR.md); so do we.
        pb = self._make_playback(pid, q["media"], f"bridge:{bid}")
        b.playbacks.append(pb)
        self.playbacks[pid] = (pb, b)
        return 201, self.playback_json(pb)

    # ---- playbacks
    def op_playbacks_get(self, pp, q, body):
        entry = self.playbacks.get(pp["playbackId"])
        if entry is None:
            raise AriHttpError(404, "Playback not found")
        return 200, self.playback_json(entry[0])

    def op_playbacks_stop(self, pp, q, body):
        entry = self.playbacks.get(pp["playbackId"])
        if entry is None:
            raise AriHttpError(404, "Playback not found")
        pb, target = entry
        if isinstance(target, Bridge):
            if not target.stop_playback(pb):
                pb.state = "done"
                self._playback_event(pb, "finished")
        else:
            pb.state = "done"  # the channel playback task sees this within one frame
            self._playback_event(pb, "finished")
        return 204, None

    def op_playbacks_control(self, pp, q, body):
        # Asterisk's state table (res_stasis_playback.c): a queued playback takes only restart (a
        # no-op); pausing publishes state "paused" with no event; unpausing publishes "playing",
        # which ARI sends as a second PlaybackStarted. Anything else in a state that lacks it: 409.
        entry = self.playbacks.get(pp["playbackId"])
        if entry is None:
            raise AriHttpError(404, "Playback not found")
        pb, op = entry[0], q["operation"]
        if pb.state == "queued" and op == "restart":
            return 204, None
        if pb.state == "playing" and op in ("restart", "reverse", "forward") and pb.frames is not None:
            pb.seek(op)
            return 204, None
        if pb.state == "playing" and op in ("pause", "unpause"):
            if op == "pause":
                pb.state = "paused"  # the mixer's next tick plays nothing of it
            return 204, None
        if pb.state == "paused" and op in ("pause", "unpause"):
            if op == "unpause":
                pb.state = "playing"
                self._playback_event(pb, "started")
            return 204, None
        raise AriHttpError(409, "Playback not in a state to accept this operation")

    # ---- call lifecycle
    def _note_bridged(self, b: Bridge) -> None:
        members = [c for c in self.channels.values() if c.bridge is b]
        callers = [c for c in members if c.kind == "caller"]
        exts = [c for c in members if c.kind == "external"]
        for c in callers:
            rec = self.calls.get(c.id)
            if rec is not None and exts:
                rec.bridged = True
                rec.external_media = exts[0].id
                rec.bridge_id = b.id

    def _leave_bridge(self, ch: SimChannel) -> None:
        b = ch.bridge
        if b is None:
            return
        technology = b.technology  # the event shows the bridge as it was before this change
        b.remove(ch.media)
        ch.bridge = None
        ch.media.bridge = None
        self.emit(ch.app, {"type": "ChannelLeftBridge", "bridge": {**self.bridge_json(b), "technology": technology}, "channel": ch.to_json()})
        if not b.members:
            # The bridge's playbacks had only its announcer left to play to: they end, failed.
            for pb in list(b.playbacks):
                b.playbacks.remove(pb)
                pb.state = "failed"
                self._playback_event(pb, "finished")
            b.player.stopped()

    def hangup_channel(self, ch: SimChannel, by: str, cause: int = CAUSE_NORMAL, invalid_extension: bool = False) -> None:
        """``by``: "caller" (the far end), "ari" (an app's DELETE), "dialplan", "transfer".
        ``invalid_extension``: the PBX drops a channel sent where the dialplan has nothing."""
        if self.channels.get(ch.id) is not ch:
            return
        # An app's hangup shows cause 32 with soft; the real cause comes on ChannelDestroyed.
        request: dict[str, Any] = {"cause": CAUSE_APP_HANGUP, "soft": True} if by == "ari" else {"cause": cause}
        if invalid_extension:
            request["soft"] = True
        self.channel_event(ch, {"type": "ChannelHangupRequest", **request, "channel": ch.to_json()})
        self._leave_bridge(ch)
        if ch.in_stasis:
            ch.leave_stasis()
            self.emit(ch.app, {"type": "StasisEnd", "channel": ch.to_json()})
        if ch.kind == "external":
            ch.dialplan_app = EXTERNAL_MEDIA_APP
        if invalid_extension:
            ch.priority, ch.dialplan_app = ch.priority + 1, ("", "")
        for pb in ch.channel_playbacks:
            if pb.state in ("playing", "paused"):
                pb.state = "failed"
                self._playback_event(pb, "finished")
        del self.channels[ch.id]
        ch.vars["HANGUPCAUSE"] = str(cause)
        # StasisEnd is the last event of a caller that entered Stasis from the dialplan, unless an
        # app subscribed to it (BEHAVIOUR.md).
        text = next((t for c, t in HANGUP_CAUSES.values() if c == cause), "Normal Clearing")
        self.channel_event(ch, {"type": "ChannelDestroyed", "cause": cause, "cause_txt": text, "channel": ch.to_json()})
        if isinstance(ch.media, ExternalMediaEndpoint):
            if ch.media.local:
                self._used_ports.discard(ch.media.local[1])
            ch.media.close()
        else:
            self.clock.callers.discard(ch.media)
            self.final_vars[ch.id] = dict(ch.vars)
        rec = self.calls.get(ch.id)
        if rec is not None and rec.ended_by is None:
            rec.ended_by = by
            rec.ended_at = time.monotonic()
            rec.hangup_cause = cause

    # ---- simulated callers
    def place_call(
        self,
        wav: str | None = None,
        hold_s: float = 2.0,
        caller_number: str = "",
        app: str = "aiagent",
        args: list[str] | None = None,
        script: list[Step] | None = None,
        line: Line = Line(),
        dialled: str = "s",
        broadcast: Broadcast | None = None,
    ) -> CallRecord:
        """A caller dials ``dialled``, which runs Stasis(``app``, ``args``), or with ``broadcast``
        StasisBroadcast(): every connected app matching its filter gets CallBroadcast and the first
        to claim the call gets it (no claim in time: the dialplan hangs up). It says ``wav`` then
        stays on the line ``hold_s``, or follows ``script``; then it hangs up. ``line``: its noise
        and rate."""
        steps: list[Step] = script if script is not None else [Say(wav), Pause(hold_s)] if wav else [Pause(hold_s)]
        for st in steps:  # fail now, not in the middle of the call
            if isinstance(st, Say):
                self._speech(st.wav)
        cid = self._new_id()
        media = CallerMedia(rate=line.rate, noise=line_noise(line.noise_dbfs, seed=len(self.calls)) if line.noise_dbfs is not None else b"")
        ch = SimChannel(
            cid, f"PJSIP/{caller_number or 'sim'}-{cid}", "caller", media, caller_number=caller_number, caller_name="Sim Caller",
            app=app, app_args=list(args or []), context="from-pstn", exten=dialled, priority=2,
        )
        rec = CallRecord(cid, caller_number, steps, media=media, dialled=dialled)
        self._forget_old_calls()
        self.calls[cid] = rec
        if broadcast is not None:
            ch.app = None
            self.channels[cid] = ch
            self._spawn(self._broadcast(ch, rec, broadcast))
            return rec
        if not self.app_active(app):
            # As Asterisk: an originate into an app with no WebSocket is hung up at once.
            rec.accepted = False
            rec.error = f"Stasis app '{app}' not active"
            rec.finished.set()
            return rec
        self.channels[cid] = ch
        ch.in_stasis = True
        self.emit(app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})
        self._spawn(self._run_caller(ch, rec))
        return rec

    async def _broadcast(self, ch: SimChannel, rec: CallRecord, b: Broadcast) -> None:
        """StasisBroadcast(timeout, app_filter): CallBroadcast to each matching app in a shuffled
        order (as Asterisk does, for a fair race), then wait for the first claim."""
        apps = [a for a in self.sockets if self.app_active(a) and (not b.app_filter or re.search(b.app_filter, a))]
        self.rng.shuffle(apps)
        claim = self.broadcasts[ch.id] = _BroadcastState(apps)
        for app in apps:
            self.emit(app, {"type": "CallBroadcast", "channel": ch.to_json(), "caller": ch.caller_number, "called": rec.dialled})
        try:
            await asyncio.wait_for(claim.claimed.wait(), b.timeout_ms / 1000)
        except TimeoutError:
            claim.expired = True
            rec.accepted = False
            rec.error = "no app claimed the call (STASISSTATUS=TIMEOUT)"
            if ch.id in self.channels:
                self.hangup_channel(ch, by="dialplan")
            rec.finished.set()

    def op_events_claimChannel(self, pp, q, body):
        ch = self.channels.get(q["channelId"])
        claim = self.broadcasts.get(q["channelId"])
        if ch is None or claim is None or claim.expired:
            return 404, {"message": "Channel not found or not in broadcast state"}
        if claim.winner is not None:
            return 409, {"message": "Channel has already been claimed by another application"}
        app = q["application"]
        claim.winner = app
        claim.claimed.set()
        ch.app = app
        ch.in_stasis = True
        for other in claim.apps:
            self.emit(other, {"type": "CallClaimed", "channel": ch.to_json(), "winner_app": app})
        self.emit(app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})
        rec = self.calls.get(ch.id)
        if rec is not None:
            self._spawn(self._run_caller(ch, rec))
        return 204, None

    def _forget_old_calls(self) -> None:
        finished = [r for r in self.calls.values() if r.finished.is_set()]
        for r in finished[: max(0, len(finished) - KEEP_FINISHED_CALLS)]:
            del self.calls[r.id]
            self.final_vars.pop(r.id, None)
            if r.external_media is not None and r.external_media not in self.channels:
                self.external_endpoints.pop(r.external_media, None)

    async def _run_caller(self, ch: SimChannel, rec: CallRecord) -> None:
        media = ch.media
        assert isinstance(media, CallerMedia)
        try:
            deadline = time.monotonic() + BRIDGE_WAIT_S
            while not rec.bridged and ch.id in self.channels and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not rec.bridged:
                if ch.id in self.channels:
                    rec.error = "never bridged with ExternalMedia"
                    self.hangup_channel(ch, by="caller")
                return
            self.clock.callers.add(media)
            for step in rec.script:
                if ch.id not in self.channels:
                    break
                await self._run_step(ch, media, step)
            self.hangup_channel(ch, by="caller")
            # Did the engine clean up what served this call?
            end = time.monotonic() + CLEANUP_GRACE_S
            while time.monotonic() < end and not self._call_cleaned(rec):
                await asyncio.sleep(FRAME_S)
            rec.hangup_clean = self._call_cleaned(rec)
        finally:
            rec.finished.set()

    async def _run_step(self, ch: SimChannel, media: CallerMedia, step: Step) -> None:
        alive = lambda: ch.id in self.channels  # noqa: E731
        if isinstance(step, (Say, SayText)):
            media.say(await spoken(step, self._speech))  # speaks from the next tick on
            while alive() and not media.speech_done:
                await asyncio.sleep(0.01)
        elif isinstance(step, Dtmf):
            await self.press_keys(ch, step.digits, step.duration_ms)
        else:
            await wait_step(step, alive, media.agent_frames)

    def _speech(self, wav: str) -> bytes:
        cached = self._speech_cache.get(wav)
        if cached is None:
            cached = self._speech_cache[wav] = load_wav_ulaw(wav)
        return cached

    def _call_cleaned(self, rec: CallRecord) -> bool:
        return rec.id not in self.channels and rec.external_media not in self.channels and rec.bridge_id not in self.bridges

    def leftovers(self) -> tuple[list[str], list[str]]:
        live_callers = {c.id for c in self.channels.values() if c.kind == "caller"}
        return [c for c in self.channels if c not in live_callers], list(self.bridges)

    # ---- /sim control API
    async def _sim_place_call(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            script = parse_script(data["script"]) if "script" in data else None
            noise = data.get("noise_dbfs")
            line = Line(None if noise is None else float(noise), int(data.get("rate", 8000)))
            bc = data.get("broadcast")  # {"timeout_ms": 500, "app_filter": "^aiagent-"}: StasisBroadcast()
            broadcast = Broadcast(int(bc.get("timeout_ms", 500)), str(bc.get("app_filter", ""))) if isinstance(bc, dict) else None
            rec = self.place_call(
                data.get("wav"), float(data.get("hold_s", 2.0)), str(data.get("caller_number", "")), data.get("app", "aiagent"),
                data.get("args"), script, line, str(data.get("dialled", "s")), broadcast,
            )
        except (KeyError, OSError, ValueError, wave.Error) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(rec.report(self))

    async def _sim_list_calls(self, request: web.Request) -> web.Response:
        return web.json_response([r.report(self) for r in self.calls.values()])

    def _rec(self, request: web.Request) -> CallRecord:
        rec = self.calls.get(request.match_info["id"])
        if rec is None:
            raise web.HTTPNotFound(text="no such call")
        return rec

    async def _sim_get_call(self, request: web.Request) -> web.Response:
        return web.json_response(self._rec(request).report(self))

    async def _sim_recording(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        pcm = audioop.ulaw2lin(rec.media.agent_audio() if rec.media else b"", 2)
        return web.Response(body=wav_bytes(pcm, RATE), content_type="audio/wav")

    async def _sim_hangup(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        ch = self.channels.get(rec.id)
        if ch is not None:
            self.hangup_channel(ch, by="caller")
        return web.json_response(rec.report(self))

    async def _sim_dtmf(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        ch = self.channels.get(rec.id)
        if ch is not None:
            self._spawn(self.press_keys(ch, request.query.get("digit", "1"), int(request.query.get("duration_ms", "120"))))
        return web.json_response({"ok": ch is not None})

    async def _sim_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    def state(self) -> dict[str, Any]:
        lc, lb = self.leftovers()
        return {
            "channels": len(self.channels),
            "bridges": len(self.bridges),
            "leftover_channels": lc,
            "leftover_bridges": lb,
            "apps": sorted(a for a in self.sockets if self.app_active(a)),
            "violations": self.violations,
            "port_exhaustion_events": self.port_exhaustion_events,
            "media_ticks": self.clock.tick,
            "media_ticks_skipped": self.clock.skipped_ticks,
            "media_late_runs": self.clock.late_runs,
        }

    async def _sim_faults(self, request: web.Request) -> web.Response:
        """Sets the fault knobs (see Faults); ``{}`` clears them all."""
        data = await request.json()
        f = self.faults = Faults()
        for op, spec in data.get("bad_replies", {}).items():
            f.bad_replies[op] = (int(spec["status"]), str(spec["body"]), int(spec.get("count", 1)))
        for op, spec in data.get("drop_ws_after", {}).items():
            f.drop_ws_after[op] = float(spec["block_s"])
            if "count" in spec:
                f.drop_ws_count[op] = int(spec["count"])
        f.delays.update({op: float(v) for op, v in data.get("delays", {}).items()})
        f.rtp_loss_every = int(data.get("rtp_loss_every", 0))
        f.oversize_frame_bytes = int(data.get("oversize_frame_bytes", 0))
        return web.json_response({"ok": True})

    async def _sim_raw_event(self, request: web.Request) -> web.Response:
        data = await request.json()
        sent = sum(self.send_raw(data.get("app", "aiagent"), str(t)) for t in data["frames"])
        return web.json_response({"sent": sent})

    async def _sim_forge(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        data = await request.json()
        ep = self.external_endpoints.get(rec.external_media or "")
        if ep is None:
            return web.json_response({"error": "call has no ExternalMedia channel"}, status=409)
        ep.inject_forged(int(data.get("seq_ahead", 90)))
        return web.json_response({"ok": True})

    async def _sim_drop_ws(self, request: web.Request) -> web.Response:
        seconds = float(request.query.get("block_s", "0"))
        self.block_websockets_until = time.monotonic() + seconds
        n = await self.drop_websockets()
        return web.json_response({"dropped": n})

    async def drop_websockets(self) -> int:
        socks = list(self.all_sockets)
        # Detached at once: whatever is emitted from now on is lost, as while Asterisk has no socket.
        for app, sock in list(self.sockets.items()):
            if sock in socks:
                del self.sockets[app]
        for s in socks:
            await s.ws.close()
        return len(socks)
