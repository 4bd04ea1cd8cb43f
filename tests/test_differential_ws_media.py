"""The simulator's chan_websocket (pbxsim/ws_media.py) checked against the real Asterisk 22's.

One scenario, run on both PBXs by this file as the ARI app (tests/test_differential.py's sides place
the caller and make the requests): a WebSocket ExternalMedia channel in server mode, the app
connecting to /media/<connection id>, the caller's speech through a bridge to it, a burst of 905
frames from the app (MEDIA_XOFF, then MEDIA_XON as the queue drains), GET_STATUS, an unknown
command, then HANGUP from the app; a second channel closed by the app, a third hung up over ARI.
What each side did is normalised (ids, the connection id's form, times in bands) and compared.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from typing import Any

import aiohttp
import pytest

from media.ws_media import MediaStart, Status, parse_event
from pbxsim.server import SimPBX
from tests.test_differential import APP, AsteriskSide, Media, Side, SimSide

pytestmark = pytest.mark.asterisk

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME = re.compile(r"^WebSocket/INCOMING/0x[0-9a-f]{12}$")


def band(v: float, lo: float, hi: float) -> str:
    return "in" if lo <= v <= hi else f"out ({v:.3f} not in {lo}..{hi})"


class WsPeer:
    """The app's end of one media WebSocket: every message with its arrival time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.texts: list[tuple[float, str]] = []
        self.binary: list[tuple[float, int]] = []
        self.closed_at: float | None = None
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for m in self.ws:
            now = time.monotonic()
            if m.type == aiohttp.WSMsgType.TEXT:
                self.texts.append((now, m.data))
            elif m.type == aiohttp.WSMsgType.BINARY:
                self.binary.append((now, len(m.data)))
        self.closed_at = time.monotonic()

    async def text(self, prefix: str, timeout: float = 5.0, since: float = 0.0) -> tuple[float, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, s in self.texts:
                if t >= since and s.startswith(prefix):
                    return t, s
            await asyncio.sleep(0.005)
        raise AssertionError(f"no {prefix} within {timeout} s; got {[s for _, s in self.texts]}")


async def em_websocket(s: Side, step: str) -> tuple[int, dict[str, Any]]:
    return await s.rest(step, "POST", "/channels/externalMedia", app=APP, external_host="", format="ulaw", transport="websocket",
                        encapsulation="none", connection_type="server")


async def connect(s: Side, conn: str) -> WsPeer:
    # No credentials: measured, Asterisk's /media needs none (ARI's are ARI's).
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(f"{s.url.replace('http', 'ws', 1)}/media/{conn}", protocols=("media",))
    s._sockets.append(ws)  # noqa: SLF001 (closed with the side)
    peer = WsPeer(ws)
    peer.http = http  # type: ignore[attr-defined]
    return peer


def stasis_started(s: Side, cid: str) -> bool:
    return any(e.get("type") == "StasisStart" and e["channel"]["id"] == cid for e in s.events())


def hangup_events(s: Side, cid: str) -> list[tuple[str, Any]]:
    return [(e["type"], e.get("cause")) for e in s.events() if e.get("channel", {}).get("id") == cid
            and e["type"] in ("ChannelHangupRequest", "StasisEnd")]


async def scenario(s: Side) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    caller = await s.dial(talks=True)
    status, bridge = await s.rest("create_bridge", "POST", "/bridges", type="mixing", name="diffws")
    assert status == 200, bridge
    status, em = await em_websocket(s, "external_media")
    assert status == 200, em
    vars_ = em.get("channelvars") or {}
    conn = vars_.get("MEDIA_WEBSOCKET_CONNECTION_ID", "")
    obs["reply"] = {
        "state": em["state"], "name_form": bool(NAME.match(em["name"])), "vars": sorted(vars_),
        "optimal_frame_size_var": vars_.get("MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"), "connection_id_form": bool(UUID.match(conn)),
    }
    await s.pause("before_connect", 0.3)
    obs["stasis_before_connect"] = stasis_started(s, em["id"])
    s.begin("connect")
    peer = await connect(s, conn)
    t_start, first = await peer.text("MEDIA_START")
    ev = parse_event(first)
    assert isinstance(ev, MediaStart)
    obs["media_start"] = {
        "connection_id_is_var": ev.connection_id == conn, "channel_is_name": ev.channel == em["name"], "channel_id_is_id": ev.channel_id == em["id"],
        "format": ev.format, "optimal_frame_size": ev.optimal_frame_size, "ptime": ev.ptime, "first_message": peer.texts[0][1] == first,
        "fields": re.sub(r":\S+", ":", first),
    }
    await s.wait_event("StasisStart", channel=em["id"])
    await s.settle()
    obs["stasis_after_connect"] = stasis_started(s, em["id"])
    await s.rest("add_channels", "POST", f"/bridges/{bridge['id']}/addChannel", channel=f"{caller},{em['id']}")
    s.begin("caller_talks")
    t_talk = time.monotonic()
    await s.caller_talks()
    await asyncio.sleep(len(s.media.talk) / 8000 + 0.6)
    frames = [(t, n) for t, n in peer.binary if t >= t_talk]
    gaps = [b[0] - a[0] for a, b in zip(frames, frames[1:], strict=False)]
    obs["to_app"] = {
        "sizes": sorted({n for _, n in frames}), "enough": band(len(frames), 45, 200),
        "median_gap": band(statistics.median(gaps) if gaps else 0.0, 0.012, 0.028),
    }
    # The app's burst: MEDIA_XOFF at 900 queued, MEDIA_XON when fewer than 800 are left (one played per 20 ms).
    s.begin("burst")
    t_burst = time.monotonic()
    for _ in range(905):
        await peer.ws.send_bytes(b"\xff" * 160)
    t_xoff, _ = await peer.text("MEDIA_XOFF", since=t_burst)
    t_xon, _ = await peer.text("MEDIA_XON", timeout=6, since=t_burst)
    obs["flow"] = {"xoff_soon": band(t_xoff - t_burst, 0, 0.5), "xon_after_s": band(t_xon - t_xoff, 1.7, 2.6)}
    await peer.ws.send_str("GET_STATUS")
    _, st_text = await peer.text("STATUS", since=t_xon)
    st = parse_event(st_text)
    assert isinstance(st, Status)
    obs["status"] = {"channel_id_is_id": st.channel_id == em["id"], "levels": (st.xon_level, st.xoff_level), "queue_below_xon": st.queue_length < 800,
                     "queue_full": st.queue_full, "bulk_media": st.bulk_media, "media_paused": st.media_paused}
    n_texts = len(peer.texts)
    await peer.ws.send_str("BOGUS_COMMAND")
    await asyncio.sleep(0.3)
    obs["unknown_command_answer"] = [t for _, t in peer.texts[n_texts:]]
    await s.rest("flush", "GET", f"/channels/{em['id']}")
    s.begin("app_hangup")
    await peer.ws.send_str("HANGUP")
    await s.wait_event("StasisEnd", channel=em["id"])
    await asyncio.wait_for(peer.task, 5)
    await s.settle()
    obs["app_hangup"] = {"events": hangup_events(s, em["id"]), "close_code": peer.ws.close_code}
    await peer.http.close()  # type: ignore[attr-defined]

    # The app closes its socket: the channel hangs up.
    status, em2 = await em_websocket(s, "external_media_2")
    peer2 = await connect(s, em2["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"])
    await peer2.text("MEDIA_START")
    await s.wait_event("StasisStart", channel=em2["id"])
    s.begin("app_closes")
    await peer2.ws.close()
    await s.wait_event("StasisEnd", channel=em2["id"])
    await s.settle()
    obs["app_closes"] = {"events": hangup_events(s, em2["id"])}
    await peer2.http.close()  # type: ignore[attr-defined]

    # ARI hangs the channel up: the socket closes.
    status, em3 = await em_websocket(s, "external_media_3")
    conn3 = em3["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"]
    peer3 = await connect(s, conn3)
    await peer3.text("MEDIA_START")
    await s.wait_event("StasisStart", channel=em3["id"])
    await s.rest("delete_em3", "DELETE", f"/channels/{em3['id']}")
    await asyncio.wait_for(peer3.task, 5)
    obs["ari_hangup"] = {"close_code": peer3.ws.close_code, "texts_after_start": [t for _, t in peer3.texts[1:] if not t.startswith("MEDIA_X")]}
    await peer3.http.close()  # type: ignore[attr-defined]
    # A second connection for a channel that is gone, and one for an id that never was.
    obs["refused"] = {}
    async with aiohttp.ClientSession() as http:
        for what, cid in (("gone", conn3), ("never", "00000000-0000-0000-0000-000000000000")):
            try:
                ws = await http.ws_connect(f"{s.url.replace('http', 'ws', 1)}/media/{cid}", protocols=("media",))
                obs["refused"][what] = "connected"
                await ws.close()
            except aiohttp.WSServerHandshakeError as e:
                obs["refused"][what] = e.status

    await s.rest("hangup_caller", "DELETE", f"/channels/{caller}")
    await s.rest("delete_bridge", "DELETE", f"/bridges/{bridge['id']}")
    return obs


async def run(side: Side) -> dict[str, Any]:
    await side.open()
    try:
        return await scenario(side)
    finally:
        await side.close()


async def test_websocket_media_simulator_behaves_as_the_real_asterisk(asterisk, tmp_path):
    media = Media(tmp_path / "media")
    media.write()
    real = await run(AsteriskSide(asterisk.url, media))
    sim = SimPBX(username="ari", password="ari")
    await sim.start(port=0)
    try:
        simulated = await run(SimSide(sim.url, media))
    finally:
        await sim.stop()
    print(json.dumps({"asterisk": real, "sim": simulated}, indent=1, default=str))
    diffs = {k: (real.get(k), simulated.get(k)) for k in real.keys() | simulated.keys() if real.get(k) != simulated.get(k)}
    assert not diffs, json.dumps(diffs, indent=1, default=str)
    assert sim.violations == [], sim.violations
