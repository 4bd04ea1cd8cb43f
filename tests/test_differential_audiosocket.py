"""The simulator's chan_audiosocket (pbxsim/audiosocket.py) checked against the real Asterisk 22.

As tests/test_differential.py (whose runner, sides and simulator process this reuses): the runner is
the ARI app itself, and here also the AudioSocket server. The same scenario runs on both PBXs: a
caller in Stasis, a bridge, an AudioSocket ExternalMedia channel to the runner's TCP server; the
caller silent, then talking; the runner's audio sent back; then the call's end one way or another.
Recorded on each side: what the connection carried (each message's kind and size, when), the
first message, how it ended (EOF, a hangup message), and the media channel's events and replies;
normalised (UUIDs, ports, ids) and compared: equal, or for counts and cadence within tolerances.

By hand against an Asterisk already running::

    .venv/bin/python tests/test_differential_audiosocket.py http://127.0.0.1:8288
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from media import audiosocket as proto  # noqa: E402
from tests.test_differential import APP, INFO_EVENTS, AsteriskSide, Media, Side, SimSide, simulator  # noqa: E402

pytestmark = pytest.mark.asterisk

TALK_S = 1.8  # the caller's talk.wav: 1 s loud, 0.8 s silent frames


@dataclass
class Conn:
    """One AudioSocket connection as the runner's server saw it."""

    writer: asyncio.StreamWriter
    opened: float
    messages: list[tuple[float, int, int, bytes]] = field(default_factory=list)  # (t, kind, length, first bytes)
    eof_at: float | None = None
    malformed: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Server:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for c in self.conns:
            c.writer.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(writer, time.monotonic())
        self.conns.append(conn)
        self.arrived.set()
        parser = proto.Parser()
        try:
            while data := await reader.read(65536):
                now = time.monotonic()
                for m in parser.feed(data):
                    conn.messages.append((now, m.kind, len(m.payload), m.payload[:16]))
        except proto.Malformed as e:
            conn.malformed = str(e)
        except ConnectionError:
            pass
        conn.eof_at = time.monotonic()
        conn.done.set()


@dataclass
class Run:
    """What one scenario saw on one side."""

    side: Side
    server: Server
    uid: str = ""
    em: str = ""
    obs: dict[str, Any] = field(default_factory=dict)


def _em_events(s: Side, em: str, step: str) -> list[str]:
    """The media channel's events in ``step``, as "Type" or "Type(cause)"."""
    out = []
    for ev in s.events(step):
        if (ev.get("channel") or {}).get("id") != em:
            continue
        kind = ev["type"]
        if kind in INFO_EVENTS:
            continue  # the simulator sends few of these: a listed difference (docs/simulator-vs-asterisk.md, informational-events)
        out.append(f"{kind}({ev['cause']})" if "cause" in ev and kind != "ChannelHangupRequest" else kind)
    return out


async def setup(s: Side, talks: bool) -> Run:
    run = Run(s, Server())
    await run.server.start()
    caller = await s.dial(talks)
    s.name(caller, "<caller>")
    status, bridge = await s.rest("create_bridge", "POST", "/bridges", type="mixing", name="diff-as")
    assert status == 200, bridge
    run.uid = str(uuid.uuid4())
    status, em = await s.rest(
        "external_media", "POST", "/channels/externalMedia", app=APP, external_host=f"127.0.0.1:{run.server.port}",
        format="slin", transport="tcp", encapsulation="audiosocket", data=run.uid,
    )
    assert status == 200, (s.kind, status, em)
    run.em = em["id"]
    o = run.obs
    o["reply.name"] = em["name"].replace(run.uid, "<uuid>").replace(str(run.server.port), "<port>")
    o["reply.state"] = em["state"]
    o["reply.vars"] = {k: v.replace(run.uid, "<uuid>").replace(str(run.server.port), "<port>") for k, v in (em.get("channelvars") or {}).items()
                       if k.startswith("AUDIOSOCKET")}
    _, start = await s.wait_event("StasisStart", channel=run.em)
    o["stasis.args"] = [a.replace(run.uid, "<uuid>") for a in start.get("args", [])]
    await asyncio.wait_for(run.server.arrived.wait(), 5)
    await s.rest("add_channels", "POST", f"/bridges/{bridge['id']}/addChannel", channel=f"{caller},{run.em}")
    run.obs["bridge"] = bridge["id"]
    run.obs["caller"] = caller
    return run


def first_message(run: Run) -> dict[str, Any]:
    c = run.server.conns[0]
    t, kind, length, head = c.messages[0]
    return {"kind": kind, "length": length, "is_uuid": head == uuid.UUID(run.uid).bytes, "connections": len(run.server.conns)}


def audio_between(run: Run, t0: float, t1: float) -> dict[str, Any]:
    msgs = [(t, k, n) for t, k, n, _ in run.server.conns[0].messages[1:] if t0 <= t < t1]
    gaps = [b[0] - a[0] for a, b in zip(msgs, msgs[1:], strict=False)]
    return {
        "count": len(msgs), "kinds": sorted({k for _, k, _ in msgs}), "sizes": sorted({n for _, _, n in msgs}),
        "median_gap_ms": round(statistics.median(gaps) * 1000, 1) if gaps else None,
    }


async def send_tone(run: Run, seconds: float) -> None:
    """The runner's audio into the call: 20 ms slin messages in real time."""
    import numpy as np

    w = run.server.conns[0].writer
    frame = (8000 * np.sin(2 * np.pi * 440 * np.arange(160) / 8000)).astype("<i2").tobytes()
    loop = asyncio.get_running_loop()
    t = loop.time()
    for _ in range(int(seconds / 0.02)):
        w.write(proto.encode_audio(frame))
        t += 0.02
        await asyncio.sleep(max(0.0, t - loop.time()))


async def ending(run: Run, step: str, act: Callable[[], Awaitable[Any]]) -> None:
    """End the call one way; record how the connection ended and the media channel's events."""
    s, c = run.side, run.server.conns[0]
    s.begin(step)
    t0 = time.monotonic()
    n_before = len(c.messages)
    await act()
    try:
        await asyncio.wait_for(c.done.wait(), 5)
    except TimeoutError:
        pass
    await asyncio.sleep(0.3)
    await s.settle()
    after = [(k, n) for _, k, n, _ in c.messages[n_before:] if k not in proto.AUDIO_RATES]
    run.obs[f"{step}.socket"] = {
        "ended": c.eof_at is not None, "within_1s": c.eof_at is not None and c.eof_at - t0 < 1.0,
        "control_messages_after": after, "malformed": c.malformed,
    }
    run.obs[f"{step}.events"] = _em_events(s, run.em, step)
    status, _ = await s._request("GET", f"/channels/{run.em}")
    run.obs[f"{step}.channel_after"] = status


async def sc_talk_then(s: Side, how: str) -> Run:
    run = await setup(s, talks=True)
    c = run.server.conns[0]
    bridged = s.marks["add_channels.reply"]
    run.obs["first"] = first_message(run)
    talk = asyncio.ensure_future(s.caller_talks())
    await asyncio.sleep(0.3 + TALK_S + 0.7)
    await talk
    talk_start = next((t for t, k, _, _ in c.messages[1:] if k in proto.AUDIO_RATES), None)
    run.obs["silent_before_talk"] = audio_between(run, 0, bridged + 0.25)["count"]
    run.obs["talk"] = audio_between(run, talk_start or 0, (talk_start or 0) + TALK_S + 0.5)
    # The runner's audio into the bridge: Asterisk takes it and goes on (no hangup, no reply on the socket).
    s.begin("runner_speaks")
    t_send = time.monotonic()
    await send_tone(run, 1.0)
    await asyncio.sleep(0.3)
    run.obs["while_runner_speaks"] = audio_between(run, t_send, time.monotonic())["count"]
    run.obs["runner_speaks.events"] = _em_events(s, run.em, "runner_speaks")
    w = c.writer
    if how == "delete":
        await ending(run, "end", lambda: s._request("DELETE", f"/channels/{run.em}"))
    elif how == "hangup_message":
        async def hangup() -> None:
            w.write(proto.encode_hangup())
            await w.drain()
        await ending(run, "end", hangup)
    elif how == "close":
        async def close() -> None:
            w.close()
        await ending(run, "end", close)
    elif how == "unknown_kind":
        async def junk() -> None:
            w.write(proto.encode(0x42, b"\x00" * 8))
            await w.drain()
        await ending(run, "end", junk)
    await s.rest("hangup_caller", "DELETE", f"/channels/{run.obs['caller']}")
    await s.rest("delete_em", "DELETE", f"/channels/{run.em}")
    await s.rest("delete_bridge", "DELETE", f"/bridges/{run.obs['bridge']}")
    run.obs["delete_em.status"] = [o.data["status"] for o in s.obs if o.step == "delete_em" and o.kind == "rest"]
    del run.obs["bridge"], run.obs["caller"]
    await run.server.stop()
    return run


async def sc_nobody_listens(s: Side) -> Run:
    """external_host where nothing listens: the request fails, no channel is left."""
    run = Run(s, Server())
    await run.server.start()
    port = run.server.port
    await run.server.stop()
    await asyncio.sleep(0.05)
    status, body = await s.rest("external_media", "POST", "/channels/externalMedia", app=APP, external_host=f"127.0.0.1:{port}",
                                format="slin", transport="tcp", encapsulation="audiosocket", data=str(uuid.uuid4()))
    run.obs["status"] = status
    status2, body2 = await s.rest("no_data", "POST", "/channels/externalMedia", app=APP, external_host=f"127.0.0.1:{port}",
                                  format="slin", transport="tcp", encapsulation="audiosocket")
    run.obs["no_data"] = (status2, (body2 or {}).get("message") if isinstance(body2, dict) else body2)
    _, chans = await s._request("GET", "/channels")
    run.obs["audiosocket_channels_left"] = [c["name"] for c in chans if c["name"].startswith("AudioSocket/")]
    return run


SCENARIOS: dict[str, Callable[[Side], Awaitable[Run]]] = {
    "delete": lambda s: sc_talk_then(s, "delete"),
    "hangup_message": lambda s: sc_talk_then(s, "hangup_message"),
    "close": lambda s: sc_talk_then(s, "close"),
    "unknown_kind": lambda s: sc_talk_then(s, "unknown_kind"),
    "nobody_listens": sc_nobody_listens,
}

# Measured values that may differ by this much (a count of 20 ms messages, a cadence in ms).
TOLERANCE = {"talk.count": 6, "talk.median_gap_ms": 3.0}


def flatten(d: Any, path: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{path}.{k}" if path else str(k)))
        return out
    return {path: d}


def compare(real: dict[str, Any], sim: dict[str, Any]) -> list[str]:
    a, b = flatten(real), flatten(sim)
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        tol = TOLERANCE.get(key)
        if tol is not None and isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            if abs(va - vb) > tol:
                diffs.append(f"{key}: asterisk {va!r}, simulator {vb!r} (tolerance {tol})")
        elif va != vb:
            diffs.append(f"{key}: asterisk {va!r}, simulator {vb!r}")
    return diffs


async def run_one(cls: type[Side], url: str, media: Media, name: str) -> Run:
    side = cls(url, media)
    try:
        await side.open()
        return await asyncio.wait_for(SCENARIOS[name](side), 40)
    finally:
        await side.close()


async def run_all(asterisk_url: str, sim_url: str, media: Media, only: list[str] | None = None) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    media.write()
    out = {}
    for name in only or list(SCENARIOS):
        real = await run_one(AsteriskSide, asterisk_url, media, name)
        sim = await run_one(SimSide, sim_url, media, name)
        out[name] = (real.obs, sim.obs)
    return out


async def test_simulated_audiosocket_behaves_as_the_real_one(asterisk, tmp_path):
    async with simulator() as sim:
        results = await run_all(asterisk.url, sim.url, Media(tmp_path / "media"))
    for name, (r, si) in results.items():
        print(f"== {name}\nasterisk: {r}\nsim:      {si}")
    assert sim.violations == [], "\n".join(sim.violations)
    diffs = {name: compare(real, simulated) for name, (real, simulated) in results.items()}
    assert not any(diffs.values()), "\n".join(f"{n}:\n  " + "\n  ".join(d) for n, d in diffs.items() if d)
    # What both showed, stated: the facts the engine is built on.
    real = {n: r for n, (r, _) in results.items()}
    assert real["delete"]["first"] == {"kind": proto.KIND_UUID, "length": 16, "is_uuid": True, "connections": 1}
    assert real["delete"]["silent_before_talk"] == 0  # a silent caller: nothing on the socket
    assert real["delete"]["talk"]["kinds"] == [proto.KIND_SLIN] and real["delete"]["talk"]["sizes"] == [320]
    assert real["delete"]["end.socket"]["control_messages_after"] == []  # the channel's hangup: EOF, no hangup message


async def _main(url: str, only: list[str]) -> None:
    import json
    import tempfile

    async with simulator() as sim:
        results = await run_all(url, sim.url, Media(Path(tempfile.mkdtemp(prefix="as-diff-media-"))), only or None)
    for name, (real, simulated) in results.items():
        print(f"== {name}\nasterisk: {json.dumps(real, default=str)}\nsim:      {json.dumps(simulated, default=str)}")
        for d in compare(real, simulated):
            print("  DIFF", d)
    print("violations:", sim.violations)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2:]))
