"""The simulated PBX: an ARI server on loopback that behaves like Asterisk 22 (BEHAVIOUR.md).

Every ARI request is validated against Asterisk's own api-docs; every event and resource it
sends is validated against the models. Anything that does not conform is recorded in
``violations`` (and answered 400/501), so a test over the simulator fails on it.

``SimPBX`` wires the pieces: the ARI resources in pbxsim/ari/ (one module each, routed by
pbxsim/ari/http.py), the events WebSocket (pbxsim/ari/events.py), the media clock and RTP
(pbxsim/media.py), the simulated callers (pbxsim/callers.py), the fault knobs (pbxsim/faults.py)
and a small control API under /sim/ to place calls and read reports (pbxsim/control.py).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.tasks import OwnedTasks

from pbxsim.ari.applications import Applications
from pbxsim.ari.bridges import Bridges
from pbxsim.ari.channels import Channels
from pbxsim.ari.events import EventBus
from pbxsim.ari.external_media import ExternalMedia, RtpPorts
from pbxsim.ari.http import AriRouter, auth_middleware
from pbxsim.ari.model import CAUSE_NORMAL, BridgeTable, ChannelTable, IdSource, SimChannel
from pbxsim.ari.playbacks import Playbacks
from pbxsim.callers import Broadcast, CallBook, Callers, SimCall
from pbxsim.control import SimControl
from pbxsim.faults import Faults
from pbxsim.media import Bridge, ExternalMediaEndpoint, MediaClock
from pbxsim.people import People, SimPerson
from pbxsim.schema import AriSpec, default_spec

from pbxsim.script import Line, Pause, Say, Step

log = logging.getLogger("pbxsim")

KEEP_FINISHED_CALLS = 200  # reports of ended calls kept; older ones go (a --sim demo runs for days)
DEFAULT_SOUNDS = [Path("/usr/share/asterisk/sounds/en"), Path("/usr/share/asterisk/sounds/en_US_f_Allison")]


class SimPBX:
    def __init__(
        self,
        *,
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
        self.rng = random.Random(seed)  # the bridges' echo timing (see BridgePlayer) and broadcasts' order
        self.username = username
        self.password = password
        self.violations: list[str] = []
        self.faults = Faults()  # changed in place (tests, POST /sim/faults): every part holds this one
        self.clock = MediaClock()
        self.tasks = OwnedTasks("pbxsim")
        self.ids = IdSource()
        self._runner: web.AppRunner | None = None
        self.port = 0

        spawn = self.tasks.spawn
        self.events = EventBus(spec=self.spec, violations=self.violations, faults=self.faults)
        self.router = AriRouter(spec=self.spec, violations=self.violations, faults=self.faults, events=self.events, spawn=spawn)
        self.channel_table = ChannelTable()
        self.bridge_table = BridgeTable(self.channel_table)
        self.book = CallBook()
        self.playbacks = Playbacks(
            channels=self.channel_table, bridges=self.bridge_table, events=self.events, clock=self.clock,
            sounds_dirs=sounds_dirs or DEFAULT_SOUNDS, spawn=spawn,
        )
        self.ari_bridges = Bridges(
            table=self.bridge_table, channels=self.channel_table, events=self.events, playbacks=self.playbacks, clock=self.clock,
            ids=self.ids, rng=self.rng, calls=self.book,
        )
        self.external_media = ExternalMedia(
            channels=self.channel_table, events=self.events, ports=RtpPorts(host=rtp_host, start=rtp_start, end=rtp_end),
            clock=self.clock, faults=self.faults, ids=self.ids,
        )
        self.ari_channels = Channels(
            table=self.channel_table, events=self.events, bridges=self.ari_bridges, playbacks=self.playbacks,
            external=self.external_media, clock=self.clock, ids=self.ids, calls=self.book, spawn=spawn,
        )
        self.external_media.hangup_channel = lambda ch, by, request=True: self.ari_channels.hangup(ch, by, request=request)
        self.callers = Callers(
            book=self.book, channels=self.channel_table, bridges=self.bridge_table, ari_channels=self.ari_channels,
            external=self.external_media, events=self.events, clock=self.clock, ids=self.ids, rng=self.rng, spawn=spawn,
        )
        self.people = People(
            table=self.channel_table, channels=self.ari_channels, events=self.events, clock=self.clock, ids=self.ids,
            run_step=self.callers.run_step, spawn=spawn,
        )
        applications = Applications(events=self.events, channels=self.channel_table, bridges=self.bridge_table, ids=self.ids)
        for resource in (applications, self.ari_channels, self.ari_bridges, self.playbacks, self.callers, self.people):
            self.router.register(resource.handlers())

    # ---- lifecycle
    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[auth_middleware(self.username, self.password)])
        app.router.add_get("/ari/events", self.events.handle)
        app.router.add_route("*", "/ari/{tail:.*}", self.router.handle)
        app.router.add_get("/media/{connection_id}", self.external_media.websockets.handle)  # chan_websocket (pbxsim/ws_media.py)
        SimControl(self).add_routes(app)
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
        await self.tasks.cancel()
        await self.events.close()
        self.external_media.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- what tests and the TUI read and set (the state itself lives in the parts above)
    @property
    def channels(self) -> dict[str, SimChannel]:
        return self.channel_table.by_id

    @property
    def bridges(self) -> dict[str, Bridge]:
        return self.bridge_table.by_id

    @property
    def external_endpoints(self) -> dict[str, ExternalMediaEndpoint]:
        return self.external_media.endpoints

    @property
    def calls(self) -> dict[str, SimCall]:
        return self.book.calls

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(operation key, path) of every valid ARI request, in order."""
        return self.router.requests

    @property
    def dialplan(self) -> dict[str, set[str]]:
        return self.ari_channels.dialplan

    @property
    def directory(self) -> dict[str, SimPerson]:
        """The people departments reach, by endpoint ("Local/EXT@CONTEXT", "PJSIP/200")."""
        return self.people.directory

    @property
    def drop_event_types(self) -> set[str]:
        return self.events.drop_event_types

    @property
    def port_exhaustion_events(self) -> int:
        return self.external_media.ports.exhaustion_events

    def app_active(self, app: str) -> bool:
        return self.events.app_active(app)

    def send_raw(self, app: str, text: str) -> bool:
        return self.events.send_raw(app, text)

    async def drop_websockets(self) -> int:
        return await self.events.drop()

    def hangup_channel(self, ch: SimChannel, by: str, cause: int = CAUSE_NORMAL, invalid_extension: bool = False) -> None:
        self.ari_channels.hangup(ch, by, cause, invalid_extension)

    async def press_keys(self, ch: SimChannel, digits: str, duration_ms: int) -> None:
        await self.ari_channels.press_keys(ch, digits, duration_ms)

    # ---- simulated callers
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
    ) -> SimCall:
        """A caller dials ``dialled``, which runs Stasis(``app``, ``args``), or with ``broadcast``
        StasisBroadcast(): every connected app matching its filter gets CallBroadcast and the first
        to claim the call gets it (no claim in time: the dialplan hangs up). It says ``wav`` then
        stays on the line ``hold_s``, or follows ``script``; then it hangs up. ``line``: its noise
        and rate (default: DTX, narrowband)."""
        steps: list[Step] = script if script is not None else [Say(wav), Pause(hold_s)] if wav else [Pause(hold_s)]
        return self.callers.place(
            steps, caller_number=caller_number, app=app, args=list(args or []), line=line or Line(), dialled=dialled, broadcast=broadcast,
            keep_finished=KEEP_FINISHED_CALLS,
        )

    def leftovers(self) -> tuple[list[str], list[str]]:
        """The channels other than callers', and the bridges, still there (the engine's to clean up)."""
        live_callers = {c.id for c in self.channels.values() if c.kind == "caller"}
        return [c for c in self.channels if c not in live_callers], list(self.bridges)

    def state(self) -> dict[str, Any]:
        lc, lb = self.leftovers()
        return {
            "channels": len(self.channels),
            "bridges": len(self.bridges),
            "leftover_channels": lc,
            "leftover_bridges": lb,
            "apps": sorted(self.events.active_apps()),
            "violations": self.violations,
            "port_exhaustion_events": self.port_exhaustion_events,
            "media_ticks": self.clock.tick,
            "media_ticks_skipped": self.clock.skipped_ticks,
            "media_late_runs": self.clock.late_runs,
        }
