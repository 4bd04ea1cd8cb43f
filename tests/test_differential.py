"""The simulator checked against the real Asterisk 22, automatically (issue 46, item 3).

One scenario description runs against both PBXs: this file's runner is the ARI app itself (not the
engine). It connects an events WebSocket for ``aiagent``, gets a caller into Stasis through the
PBX's dialplan (the simulator: POST /sim/calls; Asterisk: a Local channel into ``[aiagent-in]``,
whose other half waits silently in the ``[callers]`` context's Stasis app), then issues the same
ARI requests on both. Recorded on each side: every REST reply (status, body) and every event, each
tagged with the step it arrived in, ids, times, ports and random name suffixes normalised; and
every RTP packet the runner's ExternalMedia socket receives. The two records are compared field by
field, and the audio through a set of metrics with tolerances taken from BEHAVIOUR.md.

Every difference must be one of those listed in docs/simulator-vs-asterisk.md (``LISTED`` below,
with the reasons there): a new difference fails the test, and so does a listed one that is no
longer seen, so the simulator cannot drift from the real thing without the list changing too.

Run by hand against an Asterisk already running (prints the full comparison)::

    .venv/bin/python tests/test_differential.py http://127.0.0.1:8288
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import itertools
import json
import os
import re
import statistics
import sys
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from media.audio import audioop  # noqa: E402
from media.rtp import RtpPacket, RtpParseError  # noqa: E402
from pbxsim.asterisk import CALLERS_APP  # noqa: E402
from pbxsim.media import ast_lin2mu, line_noise, load_wav_pcm  # noqa: E402

pytestmark = pytest.mark.asterisk

DOC = ROOT / "docs" / "simulator-vs-asterisk.md"
APP = "aiagent"
USER, PASSWORD = "ari", "ari"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CALLER_NUMBER, CALLER_NAME, DIALLED = "5550001", "Sim Caller", "100"
SOUNDS_EN = Path("/usr/share/asterisk/sounds/en")
FRAME = 160  # u-law bytes in 20 ms
QUIET_S = 0.08  # a step is over when no event came for this long ...
SETTLE_MAX_S = 1.5  # ... or after this long
TALK_AFTER_S = 0.3  # the talking caller starts this long after it is bridged


# ------------------------------------------------------------------------------------------
# The audio the scenarios play: deterministic noise, no two 160-sample windows alike (so that
# every packet can be placed in its file), no u-law 0x7F (negative zero: a mixer re-encodes it
# as 0xFF, the same silence).


def _noise(seconds: float, seed: int, dbfs: float = -20.0, extra_samples: int = 0) -> bytes:
    n = int(seconds * 8000) + extra_samples
    data = line_noise(dbfs, seconds=n / 8000 + 0.01, seed=seed)[:n]
    return data.replace(b"\x7f", b"\xff")


@dataclass
class Media:
    """The files of one run: raw u-law for Asterisk's file player (played as sound:<base>) and,
    for the simulated caller's script, the caller's speech as WAV."""

    dir: Path
    a: bytes = field(default_factory=lambda: _noise(1.0, 11, extra_samples=80))  # 1.01 s: a partial last frame
    b: bytes = field(default_factory=lambda: _noise(0.5, 12, extra_samples=40))  # queued right behind a
    long: bytes = field(default_factory=lambda: _noise(3.0, 13))  # stopped mid-way
    talk: bytes = field(default_factory=lambda: _noise(1.0, 14) + b"\xff" * 6400)  # 1 s loud, 0.8 s silent
    hello: bytes = b""

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("a", "b", "long", "talk"):
            (self.dir / f"{name}.ulaw").write_bytes(getattr(self, name))
        with wave.open(str(self.dir / "talk.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(audioop.ulaw2lin(self.talk, 2))
        # What Asterisk plays of it: 8 kHz 16-bit samples, coded by its own u-law coder.
        self.hello = ast_lin2mu(load_wav_pcm(SOUNDS_EN / "hello-world.wav"))

    def uri(self, name: str) -> str:
        return f"sound:{self.dir / name}"


# ------------------------------------------------------------------------------------------
# One side: the runner as the ARI app of one PBX, for one scenario.


@dataclass
class Obs:
    step: str
    kind: str  # "rest" | "event"
    t: float
    data: Any
    label: str = ""  # rest: the request, e.g. "POST /bridges"


class ScenarioError(AssertionError):
    pass


class Side(asyncio.DatagramProtocol):
    kind = ""

    def __init__(self, url: str, media: Media) -> None:
        self.url = url.rstrip("/")
        self.media = media
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.obs: list[Obs] = []
        self.step = "start"
        self.marks: dict[str, float] = {}
        self.symbols: dict[str, str] = {}  # raw id or name -> symbol
        self.packets: list[tuple[float, tuple[str, int], bytes]] = []
        self.port = 0
        self.caller = ""
        # Where the caller's Stasis() step is (the site's dialplan decides): from its StasisStart.
        self.inbound_context = ""
        self.stasis_priority = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_event = 0.0
        self._created: list[tuple[str, str]] = []  # ("channel"|"bridge", id) for the cleanup
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.recording = True

    # ---- lifecycle
    async def open(self) -> None:
        self.http = aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=10))
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        self.ws = await self.http.ws_connect(f"{self.url}/ari/events", params={"app": APP, "subscribeAll": "false"})
        self._sockets.append(self.ws)
        self._tasks.append(asyncio.ensure_future(self._read(self.ws, record=True)))

    async def close(self) -> None:
        self.recording = False
        await self.cleanup()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in self._sockets:
            await ws.close()
        if self.http is not None:
            await self.http.close()
        if self._transport is not None:
            self._transport.close()

    async def cleanup(self) -> None:
        """Whatever the scenario left (after a failure): not recorded."""
        for kind, rid in reversed(self._created):
            with contextlib.suppress(Exception):
                await self._request("DELETE", f"/{kind}s/{rid}")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.packets.append((time.monotonic(), addr, data))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, record: bool) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            if record and self.recording:
                now = time.monotonic()
                self._last_event = now
                self.obs.append(Obs(self.step, "event", now, json.loads(msg.data)))

    async def _request(self, method: str, path: str, **params: Any) -> tuple[int, Any]:
        assert self.http is not None
        q = {k: str(v) for k, v in params.items() if v is not None}
        async with self.http.request(method, f"{self.url}/ari{path}", params=q) as r:
            text = await r.text()
            try:
                body = json.loads(text) if text.strip() else None
            except ValueError:
                body = text
            return r.status, body

    # ---- what scenarios do
    def name(self, raw: str, symbol: str) -> None:
        if raw:
            self.symbols[raw] = symbol

    def begin(self, step: str) -> None:
        if any(o.step == step for o in self.obs):
            raise ScenarioError(f"step name {step!r} used twice")
        self.step = step
        self.marks[step] = time.monotonic()

    async def rest(self, step: str, method: str, path: str, **params: Any) -> tuple[int, Any]:
        """One ARI request as a step of its own: recorded, then the events it causes settle."""
        self.begin(step)
        label = f"{method} {re.sub(r'/[^/]*[0-9][^/]*', '/{id}', path)}"
        status, body = await self._request(method, path, **params)
        self.marks[step + ".reply"] = time.monotonic()
        self.obs.append(Obs(step, "rest", time.monotonic(), {"status": status, "body": body}, label))
        if method == "POST" and status == 200 and isinstance(body, dict) and "id" in body:
            kind = "bridge" if path.startswith("/bridges") else "channel" if path.startswith("/channels") else ""
            if kind:
                self._created.append((kind, body["id"]))
        await self.settle()
        return status, body

    async def settle(self) -> None:
        start = time.monotonic()
        while True:
            now = time.monotonic()
            if now - max(self._last_event, start) >= QUIET_S or now - start >= SETTLE_MAX_S:
                return
            await asyncio.sleep(0.01)

    def events(self, step: str | None = None) -> list[dict[str, Any]]:
        return [o.data for o in self.obs if o.kind == "event" and (step is None or o.step == step)]

    async def wait_event(self, kind: str, timeout: float = 5.0, **match: Any) -> tuple[float, dict[str, Any]]:
        """The first event of ``kind`` (since the scenario began) whose fields match: ``channel`` /
        ``playback`` / ``bridge`` match the object's id."""
        end = time.monotonic() + timeout
        while True:
            for o in self.obs:
                ev = o.data
                if o.kind != "event" or ev.get("type") != kind:
                    continue
                if all((ev.get(k) or {}).get("id") == v if k in ("channel", "playback", "bridge") else ev.get(k) == v for k, v in match.items()):
                    return o.t, ev
            if time.monotonic() > end:
                raise ScenarioError(f"{self.kind}: no {kind} {match or ''} within {timeout} s in step {self.step!r}")
            await asyncio.sleep(0.005)

    async def pause(self, step: str, seconds: float) -> None:
        self.begin(step)
        await asyncio.sleep(seconds)
        await self.settle()

    # ---- the caller, which each PBX places its own way
    async def dial(self, talks: bool = False) -> str:
        raise NotImplementedError

    async def caller_talks(self) -> None:
        raise NotImplementedError

    async def caller_hangs_up(self) -> None:
        raise NotImplementedError


class SimSide(Side):
    kind = "sim"

    async def dial(self, talks: bool = False) -> str:
        self.begin("dial")
        script: list[dict[str, Any]] = [{"pause": 60}]
        if talks:
            script = [{"pause": TALK_AFTER_S}, {"say": str(self.media.dir / "talk.wav")}, *script]
        assert self.http is not None
        async with self.http.post(f"{self.url}/sim/calls", json={
            "script": script, "caller_number": CALLER_NUMBER, "dialled": DIALLED, "args": ["inbound", DIALLED], "app": APP,
        }) as r:
            rec = await r.json()
        _, ev = await self.wait_event("StasisStart")
        self.caller = ev["channel"]["id"]
        self.inbound_context, self.stasis_priority = ev["channel"]["dialplan"]["context"], ev["channel"]["dialplan"]["priority"]
        assert self.caller == rec["id"], (rec, ev)
        self._created.append(("channel", self.caller))
        await self.settle()
        return self.caller

    async def caller_talks(self) -> None:
        pass  # the script speaks TALK_AFTER_S after the call is bridged

    async def caller_hangs_up(self) -> None:
        assert self.http is not None
        async with self.http.post(f"{self.url}/sim/calls/{self.caller}/hangup") as r:
            assert r.status == 200


class AsteriskSide(Side):
    """The caller is a Local channel: its ;2 half runs [aiagent-in] (Stasis(aiagent,inbound,100)),
    its ;1 half [callers] (Stasis(aiagent-callers)), where it stays silent unless the runner plays
    the caller's speech on it."""

    kind = "asterisk"

    def __init__(self, url: str, media: Media) -> None:
        super().__init__(url, media)
        self.near = ""  # the ;1 half

    async def open(self) -> None:
        await super().open()
        assert self.http is not None
        callers = await self.http.ws_connect(f"{self.url}/ari/events", params={"app": CALLERS_APP, "subscribeAll": "false"})
        self._sockets.append(callers)
        self._tasks.append(asyncio.ensure_future(self._read(callers, record=False)))

    async def cleanup(self) -> None:
        await super().cleanup()
        if self.near:
            with contextlib.suppress(Exception):
                await self._request("DELETE", f"/channels/{self.near}")

    async def dial(self, talks: bool = False) -> str:
        self.begin("dial")
        status, near = await self._request(
            "POST", "/channels", endpoint=f"Local/{DIALLED}@aiagent-in/n", context="callers", extension="s", priority=1,
            formats="ulaw", callerId=f'"{CALLER_NAME}" <{CALLER_NUMBER}>', timeout=15,
        )
        if status != 200:
            raise ScenarioError(f"asterisk: the caller could not be placed: {status} {near}")
        self.near = near["id"]
        _, ev = await self.wait_event("StasisStart", timeout=10)
        self.caller = ev["channel"]["id"]
        self.inbound_context, self.stasis_priority = ev["channel"]["dialplan"]["context"], ev["channel"]["dialplan"]["priority"]
        self._created.append(("channel", self.caller))
        await self.settle()
        return self.caller

    async def caller_talks(self) -> None:
        bridged = self.marks.get("add_channels.reply", time.monotonic())
        await asyncio.sleep(max(0.0, bridged + TALK_AFTER_S - time.monotonic()))
        status, body = await self._request("POST", f"/channels/{self.near}/play", media=self.media.uri("talk"))
        if status != 201:
            raise ScenarioError(f"asterisk: the caller's speech did not play: {status} {body}")

    async def caller_hangs_up(self) -> None:
        status, body = await self._request("DELETE", f"/channels/{self.near}")
        if status != 204:
            raise ScenarioError(f"asterisk: the caller could not hang up: {status} {body}")


# ------------------------------------------------------------------------------------------
# The scenarios: one description, run on both sides.


async def bridged_call(s: Side, talks: bool = False, talk_detect: bool = False) -> tuple[str, str, str]:
    """A caller in Stasis, a mixing bridge, an ExternalMedia channel to the runner's socket; both
    channels in the bridge once the ExternalMedia channel is in Stasis."""
    caller = await s.dial(talks)
    s.name(caller, "<caller>")
    s.name(s.events("dial")[0]["channel"]["name"], "<caller-name>")
    if talk_detect:
        status, body = await s.rest("talk_detect", "POST", f"/channels/{caller}/variable", variable="TALK_DETECT(set)", value="500")
        if status != 204:
            raise ScenarioError(f"{s.kind}: TALK_DETECT(set) answered {status} {body}")
    status, bridge = await s.rest("create_bridge", "POST", "/bridges", type="mixing", name="diff")
    if status != 200:
        raise ScenarioError(f"{s.kind}: POST /bridges answered {status} {bridge}")
    s.name(bridge["id"], "<bridge>")
    status, em = await s.rest("external_media", "POST", "/channels/externalMedia", app=APP, external_host=f"127.0.0.1:{s.port}", format="ulaw")
    if status != 200:
        raise ScenarioError(f"{s.kind}: POST /channels/externalMedia answered {status} {em}")
    s.name(em["id"], "<em>")
    await s.wait_event("StasisStart", channel=em["id"])
    await s.rest("add_channels", "POST", f"/bridges/{bridge['id']}/addChannel", channel=f"{caller},{em['id']}")
    return caller, bridge["id"], em["id"]


async def teardown(s: Side, caller: str | None, bridge: str, em: str, reason: str = "normal") -> None:
    if caller is not None:
        await s.rest("hangup_caller", "DELETE", f"/channels/{caller}", reason=reason)
    await s.rest("delete_em", "DELETE", f"/channels/{em}")
    await s.rest("delete_bridge", "DELETE", f"/bridges/{bridge}")


async def play(s: Side, step: str, bridge: str, media: str, pid: str | None, symbol: str, wait: bool = True, settle: bool = True) -> str:
    status, pb = await s.rest(step, "POST", f"/bridges/{bridge}/play" + (f"/{pid}" if pid else ""), media=media)
    if status != 201:
        raise ScenarioError(f"{s.kind}: {step}: {status} {pb}")
    s.name(pb["id"], symbol)
    if wait:
        await s.wait_event("PlaybackFinished", playback=pb["id"], timeout=8)
        if settle:
            await s.settle()
    return str(pb["id"])


async def sc_bridge_playback(s: Side) -> None:
    """A silent caller: bridge playbacks (two queued, a sound, one stopped mid-way, a missing file),
    TALK_DETECT set, the caller hung up with a reason."""
    caller, bridge, em = await bridged_call(s)
    await s.pause("idle", 0.3)  # a two-party bridge with a silent caller: no packets
    await s.rest("talk_detect", "POST", f"/channels/{caller}/variable", variable="TALK_DETECT(set)", value="500")
    pid = uuid.uuid4().hex[:8]
    await play(s, "play_a", bridge, s.media.uri("a"), f"pa-{pid}", "<pb-a>", wait=False)
    await play(s, "play_b", bridge, s.media.uri("b"), f"pb-{pid}", "<pb-b>")
    await s.pause("quiet", 0.15)  # the stream stops: the next one starts with the marker bit
    await play(s, "play_hello", bridge, "sound:hello-world", None, "<pb-hello>", settle=False)
    # The next playback at once: the queue ran empty (a new run), but the stream went quiet for
    # less than 100 ms (no marker, no timestamp jump).
    await play(s, "play_b_again", bridge, s.media.uri("b"), f"pb2-{pid}", "<pb-b2>")
    await s.rest("bridge_after_playbacks", "GET", f"/bridges/{bridge}")
    long_id = await play(s, "play_long", bridge, s.media.uri("long"), f"pl-{pid}", "<pb-long>", wait=False)
    await s.pause("long_plays", 0.6)
    await s.rest("stop_long", "DELETE", f"/playbacks/{long_id}")
    await s.rest("stop_long_again", "DELETE", f"/playbacks/{long_id}")
    await play(s, "play_missing", bridge, f"sound:{s.media.dir / 'missing'}", f"pm-{pid}", "<pb-missing>")
    await teardown(s, caller, bridge, em, reason="busy")
    await s.rest("delete_bridge_again", "DELETE", f"/bridges/{bridge}")


async def sc_caller_talks_then_hangs_up(s: Side) -> None:
    """TALK_DETECT on a caller who speaks (its audio forwarded to the ExternalMedia channel), then
    hangs up while a bridge playback runs."""
    caller, bridge, em = await bridged_call(s, talks=True, talk_detect=True)
    s.begin("caller_talks")
    await s.caller_talks()
    await asyncio.sleep(len(s.media.talk) / 8000 + 0.5)
    await s.settle()
    await play(s, "play_hello", bridge, "sound:hello-world", None, "<pb-hello>", wait=False)
    await s.pause("playing", 0.5)
    s.begin("caller_hangs_up")
    await s.caller_hangs_up()
    await asyncio.sleep(0.3)
    await s.settle()
    await s.rest("caller_gone", "GET", f"/channels/{caller}")
    await teardown(s, None, bridge, em)


async def sc_transfer(s: Side) -> None:
    """continue into an existing extension, with the caller subscribed (as the engine does)."""
    caller, bridge, em = await bridged_call(s)
    await s.rest("subscribe", "POST", f"/applications/{APP}/subscription", eventSource=f"channel:{caller}")
    await s.rest("continue", "POST", f"/channels/{caller}/continue", context="transfer-target", extension="201", priority=1)
    await s.pause("in_dialplan", 0.3)
    await s.rest("continue_again", "POST", f"/channels/{caller}/continue", context="transfer-target", extension="201", priority=1)
    await s.rest("add_back", "POST", f"/bridges/{bridge}/addChannel", channel=caller)
    await s.rest("bridge_after_transfer", "GET", f"/bridges/{bridge}")
    await s.rest("unsubscribe", "DELETE", f"/applications/{APP}/subscription", eventSource=f"channel:{caller}")
    await s.rest("hangup_transferred", "DELETE", f"/channels/{caller}")
    await teardown(s, None, bridge, em)


async def sc_transfer_to_nowhere(s: Side) -> None:
    """continue into an extension that does not exist: the PBX drops the caller at once."""
    caller, bridge, em = await bridged_call(s)
    await s.rest("subscribe", "POST", f"/applications/{APP}/subscription", eventSource=f"channel:{caller}")
    await s.rest("continue", "POST", f"/channels/{caller}/continue", context="transfer-target", extension="nothere", priority=1)
    await s.pause("dropped", 0.3)
    await s.rest("caller_gone", "GET", f"/channels/{caller}")
    await teardown(s, None, bridge, em)


async def sc_errors(s: Side) -> None:
    """Error answers, and the bridge and Stasis operations around them."""
    caller, bridge, em = await bridged_call(s)
    await s.rest("continue_unknown", "POST", "/channels/nosuchchannel/continue", context="transfer-target", extension="201")
    await s.rest("hangup_unknown", "DELETE", "/channels/nosuchchannel")
    await s.rest("get_unknown", "GET", "/channels/nosuchchannel")
    await s.rest("hangup_bad_reason", "DELETE", f"/channels/{caller}", reason="bogus")
    await s.rest("hangup_reason_and_code", "DELETE", f"/channels/{caller}", reason="busy", reason_code=17)
    await s.rest("hangup_bad_code", "DELETE", f"/channels/{caller}", reason_code="abc")
    await s.rest("continue_unknown_label", "POST", f"/channels/{caller}/continue", context="transfer-target", extension="201", label="nolabel")
    await s.rest("talk_detect_read", "GET", f"/channels/{caller}/variable", variable="TALK_DETECT(set)")
    await s.rest("rtp_statistics", "GET", f"/channels/{em}/rtp_statistics")
    await s.rest("play_unknown_bridge", "POST", "/bridges/nosuchbridge/play", media="sound:hello-world")
    await s.rest("add_unknown_channel", "POST", f"/bridges/{bridge}/addChannel", channel="nosuchchannel")
    await s.rest("remove_em", "POST", f"/bridges/{bridge}/removeChannel", channel=em)
    await s.rest("remove_em_again", "POST", f"/bridges/{bridge}/removeChannel", channel=em)
    await s.rest("add_em_back", "POST", f"/bridges/{bridge}/addChannel", channel=em)
    await s.rest("add_em_again", "POST", f"/bridges/{bridge}/addChannel", channel=em)
    _, pb = await s.rest("play_missing_on_caller", "POST", f"/channels/{caller}/play/pc-{uuid.uuid4().hex[:8]}", media=f"sound:{s.media.dir / 'missing'}")
    s.name(pb["id"], "<pb-caller>")
    await s.rest("move_to_missing_app", "POST", f"/channels/{caller}/move", app="nosuchapp", appArgs="a,b")
    await s.rest("hangup_with_code", "DELETE", f"/channels/{caller}", reason_code=21)
    await s.rest("hangup_gone", "DELETE", f"/channels/{caller}")
    await teardown(s, None, bridge, em)


async def sc_bring_in(s: Side) -> None:
    """What bringing a person in uses (engine/handoff.py): originates that do not reach anyone (no
    such extension, busy), a snoop channel on the caller (spy both, whisper out) in a bridge of its
    own, and the caller taken out of its bridge and put back."""
    caller, bridge, em = await bridged_call(s)
    for step, ext in (("originate_missing", "999"), ("originate_busy", "303")):
        cid = f"pr-{ext}-{uuid.uuid4().hex[:6]}"
        s.name(cid, f"<person-{ext}>")
        await s.rest(step, "POST", "/channels", endpoint=f"Local/{ext}@people", app=APP, appArgs=f"bring-in,{ext}", channelId=cid,
                     formats="ulaw", timeout=5)
        await s.settle()
    sid = f"sn-{uuid.uuid4().hex[:6]}"
    s.name(sid, "<snoop>")
    await s.rest("snoop", "POST", f"/channels/{caller}/snoop/{sid}", spy="both", whisper="out", app=APP, appArgs="bring-in,x")
    await s.wait_event("StasisStart", channel=sid)
    status, sb = await s.rest("snoop_bridge", "POST", "/bridges", type="mixing", name="diff-snoop")
    s.name(sb["id"], "<snoop-bridge>")
    await s.rest("snoop_bridged", "POST", f"/bridges/{sb['id']}/addChannel", channel=sid)
    await s.rest("caller_out", "POST", f"/bridges/{bridge}/removeChannel", channel=caller)
    await s.rest("caller_back", "POST", f"/bridges/{bridge}/addChannel", channel=caller)
    await s.rest("snoop_gone", "DELETE", f"/channels/{sid}")
    await s.rest("delete_snoop_bridge", "DELETE", f"/bridges/{sb['id']}")
    await teardown(s, caller, bridge, em)


SCENARIOS: dict[str, Callable[[Side], Awaitable[None]]] = {
    "bridge_playback": sc_bridge_playback,
    "caller_talks_then_hangs_up": sc_caller_talks_then_hangs_up,
    "transfer": sc_transfer,
    "transfer_to_nowhere": sc_transfer_to_nowhere,
    "errors": sc_errors,
    "bring_in": sc_bring_in,
}


# ------------------------------------------------------------------------------------------
# Normalisation: what differs between any two runs (ids, times, ports, random suffixes) and
# what the site's dialplan decides (the caller's context and Stasis priority, its channel name).

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$")
EID_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_RES = [
    (re.compile(r"UnicastRTP/127\.0\.0\.1:\d+-0x[0-9a-f]+"), "UnicastRTP/127.0.0.1:<port>-0x<hex>"),
    (re.compile(r"Announcer/ARI-[0-9a-f]+;2"), "Announcer/ARI-<n>;2"),
    (re.compile(r"Local/(\w+)@([\w-]+)-[0-9a-f]{8};([12])"), r"Local/\1@\2-<hex>;\3"),
    # Asterisk numbers snoop channels from one counter per process: a shared instance's earlier snoops move it.
    (re.compile(r"Snoop/(\S+)-[0-9a-f]{8}"), r"Snoop/\1-<n>"),
]


def normalise(value: Any, side: Side, key: str = "") -> Any:
    if isinstance(value, dict):
        out = {k: normalise(v, side, k) for k, v in value.items()}
        if key == "channelvars" and out.get("STASISSTATUS") == "":
            del out["STASISSTATUS"]  # in an ExternalMedia reply or not: a race on Asterisk (set as it enters Stasis)
        if key == "bridge" and isinstance(out.get("channels"), list):
            # A bridge playback's announcer channel, listed or not as the bridge's last member goes:
            # a race on Asterisk. The runner knows every other channel. Their order is that of
            # Asterisk's container, not the order they joined in (a channel taken out and put back
            # came first again): compared as a set.
            out["channels"] = sorted(c for c in out["channels"] if not (isinstance(c, str) and c not in side.symbols.values()))
        if {"context", "exten", "priority", "app_name"} <= out.keys() and value.get("context") == side.inbound_context:
            out["context"] = "<inbound-context>"
            if value.get("priority") == side.stasis_priority:
                out["priority"] = "<stasis-priority>"
        return out
    if isinstance(value, list):
        return [normalise(v, side, key) for v in value]
    if not isinstance(value, str):
        return value
    if key in ("timestamp", "creationtime") and TIME_RE.match(value):
        return "<time>"
    if key == "asterisk_id" and EID_RE.match(value):
        return "<asterisk-id>"
    if key == "UNICASTRTP_LOCAL_PORT" and value.isdigit():
        return "<port>"
    if value in side.symbols:
        return side.symbols[value]
    for raw, sym in sorted(side.symbols.items(), key=lambda kv: -len(kv[0])):
        value = re.sub(rf"(?<![\w.]){re.escape(raw)}(?![\w.])", sym, value)
    for rx, repl in NAME_RES:
        value = rx.sub(repl, value)
    return value


def event_key(ev: dict[str, Any]) -> str:
    """An event's type and what it is about, e.g. ``StasisEnd <caller>``."""
    about = [ev[k]["id"] for k in ("channel", "playback", "bridge", "peer") if isinstance(ev.get(k), dict) and "id" in ev[k]]
    extra = f" {ev['variable']}" if "variable" in ev else ""
    return f"{ev.get('type')}{extra} {' '.join(map(str, about))}".strip()


# ------------------------------------------------------------------------------------------
# Differences


@dataclass(frozen=True)
class Diff:
    scenario: str
    step: str
    what: str  # "rest POST /bridges", "event StasisStart <em>", "only on asterisk: event Dial", "audio hello"
    path: str  # the field ("body.state", "channel.dialplan.app_name"), or the metric
    real: Any = None
    sim: Any = None

    def __str__(self) -> str:
        where = f"{self.scenario} / {self.step} / {self.what}" + (f" / {self.path}" if self.path else "")
        return f"{where}: asterisk={_short(self.real)} sim={_short(self.sim)}"


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) < 160 else s[:157] + "..."


MISSING = "<absent>"


def diff_values(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in a:
                out.append((p, MISSING, b[k]))
            elif k not in b:
                out.append((p, a[k], MISSING))
            else:
                out += diff_values(a[k], b[k], p)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += diff_values(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [(path, a, b)]


# Events a real Asterisk sends that the engine does not read and the simulator does not send
# (listed difference "informational-events"): compared by presence only.
INFO_EVENTS = {"Dial", "ChannelStateChange", "ChannelConnectedLine", "ChannelVarset", "ChannelCallerId"}


def compare_records(scenario: str, real: Side, sim: Side) -> list[Diff]:
    diffs: list[Diff] = []
    steps = list(dict.fromkeys(o.step for o in real.obs + sim.obs))
    for step in steps:
        # REST replies, one to one.
        rr = [o for o in real.obs if o.step == step and o.kind == "rest"]
        sr = [o for o in sim.obs if o.step == step and o.kind == "rest"]
        for a, b in zip(rr, sr, strict=False):  # a count that differs is a difference of its own
            na, nb = normalise(a.data, real), normalise(b.data, sim)
            for n in (na, nb):
                # A channel playback runs in the channel's own thread: a missing file may have
                # failed already when Asterisk writes the reply, or not (a race).
                if a.label.startswith("POST /channels/{id}/play") and isinstance(n["body"], dict) and n["body"].get("state") == "failed":
                    n["body"]["state"] = "queued"
            for p, x, y in diff_values(na, nb):
                diffs.append(Diff(scenario, step, f"rest {a.label}", p, x, y))
        if len(rr) != len(sr):
            diffs.append(Diff(scenario, step, "rest", "count", len(rr), len(sr)))
        # Events: informational ones by presence, the rest aligned by type and subject.
        re_ = [normalise(o.data, real) for o in real.obs if o.step == step and o.kind == "event"]
        se_ = [normalise(o.data, sim) for o in sim.obs if o.step == step and o.kind == "event"]
        for side_name, evs, other in (("asterisk", re_, se_), ("sim", se_, re_)):
            other_keys = {event_key(e) for e in other}
            for e in evs:
                if e["type"] in INFO_EVENTS and event_key(e) not in other_keys:
                    diffs.append(Diff(scenario, step, f"only on {side_name}: event {event_key(e)}", "", *((e, None) if side_name == "asterisk" else (None, e))))
        # In order within each stream (a channel's events, the playbacks' events, the bridges'):
        # Asterisk sends them from different threads, so their interleaving varies run to run.
        re_ = [e for e in re_ if e["type"] not in INFO_EVENTS]
        se_ = [e for e in se_ if e["type"] not in INFO_EVENTS]
        for stream in dict.fromkeys(map(event_stream, re_ + se_)):
            sa = [e for e in re_ if event_stream(e) == stream]
            sb = [e for e in se_ if event_stream(e) == stream]
            sm = difflib.SequenceMatcher(None, [event_key(e) for e in sa], [event_key(e) for e in sb], autojunk=False)
            for op, i1, i2, j1, j2 in sm.get_opcodes():
                if op == "equal":
                    for x, y in zip(sa[i1:i2], sb[j1:j2], strict=True):
                        for p, u, v in diff_values(x, y):
                            diffs.append(Diff(scenario, step, f"event {event_key(x)}", p, u, v))
                    continue
                for x in sa[i1:i2]:
                    diffs.append(Diff(scenario, step, f"only on asterisk: event {event_key(x)}", "", x, None))
                for y in sb[j1:j2]:
                    diffs.append(Diff(scenario, step, f"only on sim: event {event_key(y)}", "", None, y))
    return diffs


def event_stream(ev: dict[str, Any]) -> str:
    if "playback" in ev:
        return "playbacks"
    if isinstance(ev.get("channel"), dict):
        return f"channel {ev['channel'].get('id')}"
    return "bridges" if "bridge" in ev else "other"


# ------------------------------------------------------------------------------------------
# Audio: what the runner's ExternalMedia socket received.


@dataclass
class Pkt:
    t: float
    rtp: RtpPacket


def rtp_packets(s: Side) -> list[Pkt]:
    out = []
    for t, _, data in s.packets:
        with contextlib.suppress(RtpParseError):
            out.append(Pkt(t, RtpPacket.parse(data)))
    return out


def window(pkts: list[Pkt], t0: float, t1: float) -> list[Pkt]:
    return [p for p in pkts if t0 <= p.t <= t1]


def locate(ref: bytes) -> dict[bytes, int]:
    """Every 160-sample window of ``ref`` -> its offset."""
    return {ref[i : i + FRAME]: i for i in range(0, len(ref) - FRAME + 1)}


def dbfs(ulaw: bytes) -> float:
    rms = audioop.rms(audioop.ulaw2lin(ulaw, 2), 2) if ulaw else 0
    return round(20 * np.log10(rms / 32768), 2) if rms else -120.0


def stream_metrics(pkts: list[Pkt], ref: bytes, started: float) -> dict[str, Any]:
    """How a stream carries ``ref``: the packets' form, which of them are silence or a window of
    ``ref``, where ``ref``'s frames land against ``started`` (frame n due at started + 20(n+1) ms)."""
    where = locate(ref)
    silence = b"\xff" * FRAME
    kinds: list[str] = []
    late: list[float] = []
    offsets: list[int] = []
    content = b""
    for p in pkts:
        pl = p.rtp.payload
        if pl == silence:
            kinds.append("silence")
        elif pl in where:
            kinds.append("content")
            off = where[pl]
            offsets.append(off)
            content += pl
            late.append((p.t - (started + 0.02 * (off / FRAME + 1))) * 1000)
        else:
            kinds.append("other")
    gaps = [(b.t - a.t) * 1000 for a, b in itertools.pairwise(pkts)]
    seq_steps = {(b.rtp.sequence - a.rtp.sequence) & 0xFFFF for a, b in itertools.pairwise(pkts)}
    ts_steps = [(b.rtp.timestamp - a.rtp.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(pkts)]
    # After a gap (marker set) the timestamp jumps by the wall-clock gap.
    jumps = [abs(step / 8 - gap) for step, gap, p in zip(ts_steps, gaps, pkts[1:], strict=True) if p.rtp.marker]
    ref_level = dbfs(b"".join(ref[o : o + FRAME] for o in offsets))
    return {
        "packets": len(pkts),
        "sizes": sorted({len(p.rtp.payload) for p in pkts}),
        "payload_types": sorted({p.rtp.payload_type for p in pkts}),
        "ssrcs": len({p.rtp.ssrc for p in pkts}),
        "seq_steps": sorted(seq_steps),
        "ts_steps_unmarked": sorted({step for step, p in zip(ts_steps, pkts[1:], strict=True) if not p.rtp.marker}),
        "ts_jump_off_gap_ms": round(max(jumps), 1) if jumps else 0.0,
        "first_marker": pkts[0].rtp.marker if pkts else None,
        "markers_after_first": sum(p.rtp.marker for p in pkts[1:]),
        "first_packet_ms": round((pkts[0].t - started) * 1000, 1) if pkts else None,
        "other_packets": kinds.count("other"),
        "content_packets": kinds.count("content"),
        "silence_before": kinds.index("content") if "content" in kinds else None,
        "frame_steps": sum(1 for a, b in itertools.pairwise(offsets) if b - a != FRAME),  # playback not continuous
        "offset_phase": sorted({o % FRAME for o in offsets}),
        "content_samples": len(offsets) * FRAME,
        "missing_tail_samples": len(ref) - (offsets[-1] + FRAME) if offsets else None,
        "late_ms_min": round(min(late), 1) if late else None,
        "late_ms_median": round(statistics.median(late), 1) if late else None,
        "gain_db": round(float(dbfs(content) - ref_level), 2) if offsets else None,
        "gap_ms_median": round(statistics.median(gaps), 1) if gaps else None,
    }


def mark(s: Side, name: str) -> float:
    return s.marks[name]


def first_event_t(s: Side, kind: str, **match: Any) -> float:
    for o in s.obs:
        ev = o.data
        if o.kind == "event" and ev.get("type") == kind and all((ev.get(k) or {}).get("id") == v for k, v in match.items()):
            return o.t
    raise ScenarioError(f"{s.kind}: no {kind} {match}")


def _pid(s: Side, symbol: str) -> str:
    return next(raw for raw, sym in s.symbols.items() if sym == symbol)


def playback_window(s: Side, pkts: list[Pkt], symbol: str, until_step: str, ref: bytes, after: float = 0.0) -> tuple[dict[str, Any], list[Pkt]]:
    """The stream while the playback ``symbol`` ran: from 50 ms before its PlaybackStarted (not
    before ``after``) to 50 ms after its PlaybackFinished, but not into ``until_step`` (steps start
    80 ms after the last event)."""
    pid = _pid(s, symbol)
    ps = first_event_t(s, "PlaybackStarted", playback=pid)
    pf = first_event_t(s, "PlaybackFinished", playback=pid)
    w = window(pkts, max(after, ps - 0.05), min(pf + 0.05, mark(s, until_step)))
    met = stream_metrics(w, ref, ps)
    met["finished_after_last_packet_ms"] = round((pf - w[-1].t) * 1000, 1) if w else None
    return met, w


def audio_bridge_playback(s: Side) -> dict[str, dict[str, Any]]:
    pkts = rtp_packets(s)
    m = s.media
    out: dict[str, dict[str, Any]] = {}
    out["idle"] = {"packets": len(window(pkts, mark(s, "add_channels"), mark(s, "play_a")))}
    # a and b queued back to back: one stream, sample-continuous. Timed from a's start.
    a_started = first_event_t(s, "PlaybackStarted", playback=_pid(s, "<pb-a>"))
    met, _ = playback_window(s, pkts, "<pb-b>", "play_hello", m.a + m.b)
    w = window(pkts, a_started - 0.05, mark(s, "play_hello"))
    met = {**stream_metrics(w, m.a + m.b, a_started), "finished_after_last_packet_ms": met["finished_after_last_packet_ms"]}
    met["b_started_after_a_finished_ms"] = round(
        (first_event_t(s, "PlaybackStarted", playback=_pid(s, "<pb-b>")) - first_event_t(s, "PlaybackFinished", playback=_pid(s, "<pb-a>"))) * 1000, 1)
    met["started_after_post_ms"] = round((a_started - mark(s, "play_a")) * 1000, 1)
    out["queued_a_b"] = met
    out["hello"], _ = playback_window(s, pkts, "<pb-hello>", "play_b_again", m.hello)
    hello_end = first_event_t(s, "PlaybackFinished", playback=_pid(s, "<pb-hello>"))
    out["hello"]["duration_ms"] = round((hello_end - first_event_t(s, "PlaybackStarted", playback=_pid(s, "<pb-hello>"))) * 1000, 1)
    out["b_right_after_hello"], _ = playback_window(s, pkts, "<pb-b2>", "bridge_after_playbacks", m.b, after=hello_end)
    w = window(pkts, hello_end - 0.1, mark(s, "bridge_after_playbacks"))
    out["b_right_after_hello"]["longest_pause_ms"] = round(max(((b.t - a.t) * 1000 for a, b in itertools.pairwise(w)), default=0.0))
    met, w = playback_window(s, pkts, "<pb-long>", "stop_long_again", m.long)
    for k in ("missing_tail_samples", "finished_after_last_packet_ms", "packets", "content_packets", "content_samples"):
        met.pop(k)  # cut short by the DELETE
    stop = mark(s, "stop_long")
    where = locate(m.long)
    content = [p for p in w if p.rtp.payload in where]
    met["last_content_after_delete_ms"] = round((content[-1].t - stop) * 1000, 1) if content else None
    met["packets_after_delete"] = sum(1 for p in w if p.t > stop + 0.03)
    met["finished_after_delete_ms"] = round((first_event_t(s, "PlaybackFinished", playback=_pid(s, "<pb-long>")) - stop) * 1000, 1)
    out["stopped"] = met
    return out


def audio_caller_talks(s: Side) -> dict[str, dict[str, Any]]:
    pkts = rtp_packets(s)
    m = s.media
    w = window(pkts, mark(s, "add_channels"), mark(s, "play_hello"))
    met = stream_metrics(w, m.talk, mark(s, "caller_talks"))
    for k in ("late_ms_min", "late_ms_median", "first_packet_ms", "silence_before", "missing_tail_samples"):
        met.pop(k)  # the caller's own start differs by a few ms between the two runners; its file ends in silence
    met["silence_packets"] = met["packets"] - met["content_packets"] - met["other_packets"]
    out = {"caller_to_em": met}
    ps = first_event_t(s, "PlaybackStarted", playback=_pid(s, "<pb-hello>"))
    before = stream_metrics(window(pkts, ps - 0.05, mark(s, "caller_hangs_up")), m.hello, ps)
    out["hello_before_hangup"] = {k: before[k] for k in ("first_packet_ms", "other_packets", "late_ms_median", "gain_db", "frame_steps")}
    hang, gone = mark(s, "caller_hangs_up"), mark(s, "caller_gone")
    after = window(pkts, hang + 0.05, gone)
    out["after_caller_left"] = {
        "packets_per_s": round(len(after) / (gone - hang - 0.05), 1),
        "sizes": sorted({len(p.rtp.payload) for p in after}),
        "other_packets": stream_metrics(after, m.hello, ps)["other_packets"],
    }
    return out


AUDIO: dict[str, Callable[[Side], dict[str, dict[str, Any]]]] = {
    "bridge_playback": audio_bridge_playback,
    "caller_talks_then_hangs_up": audio_caller_talks,
}

# How two metrics may differ and still be the same behaviour (BEHAVIOUR.md's ranges, widened for
# a loaded CI machine). A band: each side must lie in it (the real one failing it is reported as
# a broken measurement, not as a difference). "eq": equal. Anything not named: equal.
BANDS: dict[str, tuple[float, float] | str] = {
    # The first packet of a mixed stream: with PlaybackStarted (-1..+0.4 ms) or one frame later.
    "first_packet_ms": (-30.0, 70.0),
    # Frame n at PlaybackStarted + 20(n+1) ms, plus 0-2 frames of start alignment; jitter.
    "late_ms_min": (-30.0, 70.0),
    "late_ms_median": (-30.0, 70.0),
    "silence_before": (0, 3),
    "frame_steps": (0, 2),  # 0-2 frames without playback content in 9 s
    "content_samples": "frames",  # within 3 frames (the steps, the dropped last frame)
    "content_packets": "frames",
    "packets": "frames",
    "missing_tail_samples": (0, 480),  # the last partial frame never arrives (once in 24: one more frame)
    "gain_db": (-0.1, 0.1),
    "gap_ms_median": (17.0, 23.0),
    "finished_after_last_packet_ms": (-20.0, 45.0),  # 0.5-20 ms
    "b_started_after_a_finished_ms": (-2.0, 25.0),  # 0.05-1.1 ms; the simulator's tick is 20 ms
    "started_after_post_ms": (0.0, 60.0),  # 1-8 ms; the simulator starts at its next 20 ms tick
    "duration_ms": (1330.0, 1480.0),  # hello-world is 1.40 s
    "last_content_after_delete_ms": (-40.0, 30.0),  # audio stops within one frame
    "packets_after_delete": "frames",
    "silence_packets": "frames",
    "finished_after_delete_ms": (0.0, 40.0),  # about 1 ms
    "ts_jump_off_gap_ms": (0.0, 25.0),  # after a gap the timestamp jumps by the wall-clock gap
    "packets_per_s": (40.0, 60.0),
    "longest_pause_ms": (0.0, 95.0),  # under 100 ms: no marker bit, no timestamp jump
}


def _within(v: Any, band: tuple[float, float]) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and band[0] <= v <= band[1]


def compare_audio(scenario: str, real: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]]) -> tuple[list[Diff], list[str]]:
    """(differences, failures of the real Asterisk itself against its bands)."""
    diffs: list[Diff] = []
    broken: list[str] = []
    for part in real:
        for k in sorted(set(real[part]) | set(sim.get(part, {}))):
            a, b = real[part].get(k, MISSING), sim.get(part, {}).get(k, MISSING)
            rule = BANDS.get(k, "eq")
            if isinstance(rule, tuple):
                if not _within(a, rule):
                    broken.append(f"{scenario} / audio {part} / {k}: asterisk={a} outside {rule[0]}..{rule[1]}")
                elif not _within(b, rule):
                    diffs.append(Diff(scenario, "audio", f"audio {part}", k, a, b))
            elif rule == "frames":
                if a is MISSING or b is MISSING or abs(a - b) > 3 * (FRAME if "samples" in k else 1):
                    diffs.append(Diff(scenario, "audio", f"audio {part}", k, a, b))
            elif a != b:
                diffs.append(Diff(scenario, "audio", f"audio {part}", k, a, b))
    return diffs, broken


# ------------------------------------------------------------------------------------------
# The differences known and accepted: docs/simulator-vs-asterisk.md explains each (same ids).


@dataclass(frozen=True)
class Listed:
    id: str
    match: Callable[[Diff], bool]


def _is(what: str = "", path: str = "", step: str = "", scenario: str = "") -> Callable[[Diff], bool]:
    def m(d: Diff) -> bool:
        return (re.search(what, d.what) is not None and re.search(path, d.path) is not None
                and re.search(step, d.step) is not None and re.search(scenario, d.scenario) is not None)
    return m


def _only_on_asterisk(types: str) -> Callable[[Diff], bool]:
    rx = re.compile(rf"only on asterisk: event ({types})\b")
    return lambda d: rx.match(d.what) is not None and d.sim is None


LISTED: list[Listed] = [
    Listed("informational-events", _only_on_asterisk("Dial|ChannelStateChange|ChannelConnectedLine|ChannelVarset|ChannelCallerId")),
    Listed("channelvars-in-events", lambda d: (d.what.startswith("event ") and d.path == "channel.channelvars"
           or d.what.startswith("rest POST /channels") and d.path == "body.channelvars")  # and originate's and snoop's replies
           and isinstance(d.real, dict) and set(d.real) == {"UNICASTRTP_LOCAL_ADDRESS", "UNICASTRTP_LOCAL_PORT"} and d.sim == MISSING),
    Listed("connected-line", lambda d: d.what.startswith("event ") and d.path in ("channel.connected.name", "channel.connected.number")
           and d.real in (CALLER_NAME, CALLER_NUMBER) and d.sim == ""),
    Listed("caller-not-answered", lambda d: re.match(r"event \w+ <caller>", d.what) is not None and d.path == "channel.state"
           and (d.real, d.sim) == ("Up", "Ring")),
    Listed("talk-detect", _only_on_asterisk("ChannelTalkingStarted|ChannelTalkingFinished")),
    Listed("local-other-half", lambda d: d.what.startswith("only on asterisk: event ") and re.search(r" <person-\w+>;2$", d.what) is not None),
    Listed("transfer-target-dialplan", lambda d: d.step == "continue" and "ChannelDialplan <caller>" in d.what),
    Listed("schema-error-messages", lambda d: d.what.startswith("rest ") and d.path == "body.message"
           and isinstance(d.sim, str) and re.match(r"[a-zA-Z]+\.[a-zA-Z]+: parameter '", d.sim) is not None),
]


def classify(diffs: list[Diff]) -> tuple[dict[str, list[Diff]], list[Diff]]:
    by_id: dict[str, list[Diff]] = {x.id: [] for x in LISTED}
    unexplained = []
    for d in diffs:
        hit = next((x for x in LISTED if x.match(d)), None)
        if hit is None:
            unexplained.append(d)
        else:
            by_id[hit.id].append(d)
    return by_id, unexplained


# ------------------------------------------------------------------------------------------
# Running it all


async def run_scenario(side: Side, name: str) -> None:
    try:
        await side.open()
        await asyncio.wait_for(SCENARIOS[name](side), 30)
        await asyncio.sleep(0.05)
    finally:
        await side.close()


@dataclass
class Outcome:
    diffs: list[Diff]
    broken: list[str]
    audio: dict[str, tuple[dict[str, Any], dict[str, Any]]]
    seconds: dict[str, float]


async def run_all(asterisk_url: str, sim_url: str, media: Media, only: list[str] | None = None) -> Outcome:
    media.write()
    diffs: list[Diff] = []
    broken: list[str] = []
    audio: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    for name in only or list(SCENARIOS):
        sides: dict[str, Side] = {}
        for cls, url in ((AsteriskSide, asterisk_url), (SimSide, sim_url)):
            side = cls(url, media)
            t0 = time.monotonic()
            await run_scenario(side, name)
            seconds[f"{name} {side.kind}"] = round(time.monotonic() - t0, 2)
            sides[side.kind] = side
        real, simulated = sides["asterisk"], sides["sim"]
        diffs += compare_records(name, real, simulated)
        if name in AUDIO:
            ra, sa = AUDIO[name](real), AUDIO[name](simulated)
            audio[name] = (ra, sa)
            d, b = compare_audio(name, ra, sa)
            diffs += d
            broken += b
    return Outcome(diffs, broken, audio, seconds)


def report(out: Outcome) -> str:
    by_id, unexplained = classify(out.diffs)
    lines = []
    if unexplained:
        lines.append(f"{len(unexplained)} difference(s) not listed in {DOC.relative_to(ROOT)} (fix the simulator, or list them with the reason):")
        lines += [f"  {d}" for d in unexplained]
    gone = [k for k, v in by_id.items() if not v]
    if gone:
        lines.append("listed differences no longer seen (remove them from the list and the document): " + ", ".join(gone))
    if out.broken:
        lines.append("the real Asterisk itself is outside BEHAVIOUR.md's ranges (a loaded machine?):")
        lines += [f"  {b}" for b in out.broken]
    lines.append("listed differences seen: " + ", ".join(f"{k} x{len(v)}" for k, v in by_id.items() if v))
    return "\n".join(lines)


# The simulator runs in a process of its own, as Asterisk does: its 20 ms media clock is not held
# up by the runner's own work (nor the runner's clock by the simulator's).
SIM_PROCESS = """
import asyncio, gc, logging, sys
from pbxsim.people import SimPerson
from pbxsim.server import SimPBX

logging.basicConfig(level=logging.ERROR)  # its warnings (a caller sent to an invalid extension) are expected here

async def main():
    pbx = SimPBX(username=%r, password=%r, seed=46)
    pbx.dialplan["transfer-target"] = {"201"}  # as pbxsim/asterisk_etc/extensions.conf: [transfer-target] _X.
    pbx.directory["Local/303@people"] = SimPerson(answers="busy")  # [people] 303
    await pbx.start(port=0)
    print(pbx.port, flush=True)
    gc.freeze()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await pbx.stop()

asyncio.run(main())
""" % (USER, PASSWORD)


@dataclass
class Sim:
    url: str = ""
    violations: list[str] = field(default_factory=list)  # read when it stops (GET /sim/state)


# The error scenario's requests that break the ARI spec on purpose (Asterisk's answer to each is
# compared): the simulator notes them as violations.
DELIBERATE_VIOLATIONS = [
    "channels.hangup: parameter 'reason'='bogus' is not one of",
]


@contextlib.asynccontextmanager
async def simulator() -> Any:
    """A simulated PBX in a subprocess; yields a Sim whose ``violations`` (of the ARI schema) are
    read when it stops, less the deliberate ones."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIM_PROCESS, cwd=str(ROOT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.strip().isdigit():
            raise RuntimeError(f"the simulator did not start: {line!r}")
        sim = Sim(f"http://127.0.0.1:{int(line)}")
        yield sim
        async with aiohttp.ClientSession(headers=AUTH) as http, http.get(f"{sim.url}/sim/state") as r:
            violations = (await r.json())["violations"]
        sim.violations = [v for v in violations if not any(v.startswith(d) for d in DELIBERATE_VIOLATIONS)]
    finally:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# ------------------------------------------------------------------------------------------
# The test


async def test_simulator_behaves_as_the_real_asterisk(asterisk, tmp_path):
    started = time.monotonic()
    async with simulator() as sim:
        out = await run_all(asterisk.url, sim.url, Media(tmp_path / "media"))
    print(f"differential run: {time.monotonic() - started:.1f} s", out.seconds)
    assert sim.violations == [], "the runner's requests or the simulator's answers break the ARI spec:\n" + "\n".join(sim.violations)
    by_id, unexplained = classify(out.diffs)
    gone = [k for k, v in by_id.items() if not v]
    assert not unexplained and not gone and not out.broken, "\n" + report(out)


def test_listed_differences_are_documented():
    """Each listed difference has its section in docs/simulator-vs-asterisk.md, and the document
    lists no other."""
    text = DOC.read_text()
    documented = set(re.findall(r"^### `([a-z0-9-]+)`", text, re.M))
    assert documented == {x.id for x in LISTED}


# ------------------------------------------------------------------------------------------
# By hand: python tests/test_differential.py http://127.0.0.1:8288 [scenario ...]


async def _main(url: str, only: list[str]) -> None:
    import tempfile

    async with simulator() as sim:
        out = await run_all(url, sim.url, Media(Path(tempfile.mkdtemp(prefix="ast-diff-media-"))), only or None)
    print("violations:", sim.violations)
    for d in out.diffs:
        print(d)
    for name, (ra, sa) in out.audio.items():
        for part in ra:
            print(f"audio {name} {part}:\n  asterisk {ra[part]}\n  sim      {sa.get(part)}")
    print(report(out))
    print("seconds:", out.seconds)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2:]))
