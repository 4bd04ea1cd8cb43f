"""The simulator's own control API under /sim/: place simulated calls and read their reports,
hang up or press keys as the caller, set fault knobs, drop the events WebSockets, send raw frames."""

from __future__ import annotations

import wave
from typing import Any, Protocol

from aiohttp import web

from media.audio import audioop, wav_bytes
from media.frames import RATE

from runtime.tasks import OwnedTasks

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import SimChannel
from pbxsim.callers import Broadcast, CallTables, SimCall
from pbxsim.faults import Faults
from pbxsim.script import Line, Step, parse_script


class ControlledPBX(CallTables, Protocol):
    """What the control API uses of the simulator (SimPBX has it): declared here so this module
    never imports the server, which mounts these routes."""

    @property
    def calls(self) -> dict[str, SimCall]: ...

    @property
    def tasks(self) -> OwnedTasks: ...

    @property
    def faults(self) -> Faults: ...

    @property
    def events(self) -> EventBus: ...

    def place_call(
        self,
        wav: str | None = None,
        *,
        hold_s: float = 2.0,
        caller_number: str = "",
        app: str = "aiagent",
        args: list[str] | None = None,
        script: list[Step] | None = None,
        line: Line | None = None,
        dialled: str = "s",
        broadcast: Broadcast | None = None,
    ) -> SimCall: ...

    def hangup_channel(self, ch: SimChannel, by: str) -> None: ...

    async def press_keys(self, ch: SimChannel, digits: str, duration_ms: int) -> None: ...

    def send_raw(self, app: str, text: str) -> bool: ...

    def state(self) -> dict[str, Any]: ...


class SimControl:
    def __init__(self, pbx: ControlledPBX) -> None:
        self.pbx = pbx

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sim/calls", self.place_call)
        app.router.add_get("/sim/calls", self.list_calls)
        app.router.add_get("/sim/calls/{id}", self.get_call)
        app.router.add_get("/sim/calls/{id}/recording.wav", self.recording)
        app.router.add_post("/sim/calls/{id}/hangup", self.hangup)
        app.router.add_post("/sim/calls/{id}/dtmf", self.dtmf)
        app.router.add_get("/sim/state", self.state)
        app.router.add_post("/sim/websockets/drop", self.drop_ws)
        app.router.add_post("/sim/faults", self.faults)
        app.router.add_post("/sim/events/raw", self.raw_event)
        app.router.add_post("/sim/calls/{id}/forge", self.forge)

    async def place_call(self, request: web.Request) -> web.Response:
        data = await request.json()
        try:
            script = parse_script(data["script"]) if "script" in data else None
            noise = data.get("noise_dbfs")
            line = Line(None if noise is None else float(noise), int(data.get("rate", 8000)))
            bc = data.get("broadcast")  # {"timeout_ms": 500, "app_filter": "^aiagent-"}: StasisBroadcast()
            broadcast = Broadcast(int(bc.get("timeout_ms", 500)), str(bc.get("app_filter", ""))) if isinstance(bc, dict) else None
            rec = self.pbx.place_call(
                data.get("wav"), hold_s=float(data.get("hold_s", 2.0)), caller_number=str(data.get("caller_number", "")),
                app=data.get("app", "aiagent"), args=data.get("args"), script=script, line=line, dialled=str(data.get("dialled", "s")),
                broadcast=broadcast,
            )
        except (KeyError, OSError, ValueError, wave.Error) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(rec.report(self.pbx))

    async def list_calls(self, request: web.Request) -> web.Response:
        return web.json_response([r.report(self.pbx) for r in self.pbx.calls.values()])

    def _rec(self, request: web.Request) -> SimCall:
        rec = self.pbx.calls.get(request.match_info["id"])
        if rec is None:
            raise web.HTTPNotFound(text="no such call")
        return rec

    async def get_call(self, request: web.Request) -> web.Response:
        return web.json_response(self._rec(request).report(self.pbx))

    async def recording(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        pcm = audioop.ulaw2lin(rec.media.agent_audio() if rec.media else b"", 2)
        return web.Response(body=wav_bytes(pcm, RATE), content_type="audio/wav")

    async def hangup(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        ch = self.pbx.channels.get(rec.id)
        if ch is not None:
            self.pbx.hangup_channel(ch, by="caller")
        return web.json_response(rec.report(self.pbx))

    async def dtmf(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        ch = self.pbx.channels.get(rec.id)
        if ch is not None:
            self.pbx.tasks.spawn(self.pbx.press_keys(ch, request.query.get("digit", "1"), int(request.query.get("duration_ms", "120"))))
        return web.json_response({"ok": ch is not None})

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.pbx.state())

    async def faults(self, request: web.Request) -> web.Response:
        """Sets the fault knobs (see pbxsim.faults.Faults); ``{}`` clears them all."""
        self.pbx.faults.configure(await request.json())
        return web.json_response({"ok": True})

    async def raw_event(self, request: web.Request) -> web.Response:
        data = await request.json()
        sent = sum(self.pbx.send_raw(data.get("app", "aiagent"), str(t)) for t in data["frames"])
        return web.json_response({"sent": sent})

    async def forge(self, request: web.Request) -> web.Response:
        rec = self._rec(request)
        data = await request.json()
        ep = self.pbx.external_endpoints.get(rec.external_media or "")
        if ep is None:
            return web.json_response({"error": "call has no ExternalMedia channel"}, status=409)
        ep.inject_forged(int(data.get("seq_ahead", 90)))
        return web.json_response({"ok": True})

    async def drop_ws(self, request: web.Request) -> web.Response:
        n = await self.pbx.events.drop(block_s=float(request.query.get("block_s", "0")))
        return web.json_response({"dropped": n})
