"""Small helpers the benchmarks share."""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TRANSPORTS = ("rtp", "audiosocket", "websocket")
# The config sections a --set may change: how the media reaches the engine, nothing else.
TRANSPORT_SECTIONS = ("media", "rtp", "audiosocket", "websocket")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: dict | None = None):
    """GET (or POST ``data`` as JSON) and decode the JSON answer."""
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def scratch_media(scratch: str | None = None) -> str:
    """A media directory for one run's engine, in ``scratch`` (a new temporary directory by
    default), so that its call history (history.sqlite3 beside it) is the run's own too."""
    return str(Path(scratch or tempfile.mkdtemp(prefix="aiagent-bench-")) / "media")


class BenchPbx:
    """The PBX a benchmark runs against, in its own process: ``sim`` (aiagent-sim serve) or ``asterisk``
    (aiagent-sim asterisk: the real Asterisk 22 of ../shared/asterisk/ with callers on it). Either way
    callers are placed and read through the same call API at ``url`` (POST /sim/calls, GET
    /sim/calls/ID), and the engine reaches ARI with ``engine_env``. ``pids``: the PBX side's processes
    (the simulator; or the callers and Asterisk), not the engine's."""

    def __init__(self, kind: str, calls: int = 0) -> None:
        """``calls``: how many calls at once (the real Asterisk's RTP range is sized for them)."""
        import subprocess
        import sys
        import time

        root = Path(__file__).resolve().parent.parent
        self.kind = kind
        self.ari_port = free_port()
        if kind == "sim":
            self.url = f"http://127.0.0.1:{self.ari_port}"
            cmd = [sys.executable, "-m", "pbxsim.cli", "serve", "--port", str(self.ari_port)]
            self.engine_env = {"ASTERISK_ARI_PORT": str(self.ari_port)}
        elif kind == "asterisk":
            api = free_port()
            self.url = f"http://127.0.0.1:{api}"
            # Four even ports a call (the caller's and the engine's ExternalMedia), under half the range.
            ports = max(200, calls * 8)
            cmd = [sys.executable, "-m", "pbxsim.cli", "asterisk", "--ari-port", str(self.ari_port), "--port", str(api), "--rtp-ports", str(ports)]
            self.engine_env = {"ASTERISK_ARI_PORT": str(self.ari_port), "ASTERISK_ARI_USERNAME": "ari", "ASTERISK_ARI_PASSWORD": "ari"}
        else:
            raise ValueError(f"--pbx {kind}: sim or asterisk")
        # Its log goes to a file: a pipe nobody reads fills up and stops the PBX at its next line.
        self.log = Path(tempfile.mkdtemp(prefix=f"aiagent-bench-{kind}-")) / "pbx.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/sim/calls/none", timeout=1)
            except urllib.error.HTTPError:
                break  # 404: the call API answers
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the {kind} PBX did not start: {self.log.read_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} PBX's call API did not answer within 60 s") from None
                time.sleep(0.1)
        self.pids = {self.proc.pid}
        if kind == "asterisk":
            self.pids.add(int(http_json(f"{self.url}/sim/state")["asterisk_pid"]))

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            # Stuck: kill it, and the Asterisk it started (not its child: run.sh backgrounds it).
            self.proc.kill()
            for pid in self.pids - {self.proc.pid}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def add_transport_args(ap: argparse.ArgumentParser) -> None:
    """--transport and --set, the same on every benchmark that runs an engine."""
    ap.add_argument("--transport", choices=TRANSPORTS, default="rtp",
                    help="how Asterisk hands the calls' audio to the engine ([media] transport; default rtp)")
    ap.add_argument("--set", dest="media_set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help=f"one more transport setting for the engine, e.g. audiosocket.form=dialplan or websocket.connection_type=client "
                         f"(sections: {', '.join(TRANSPORT_SECTIONS)}; repeatable)")


def transport_settings(transport: str, sets: list[str] | tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The engine's config sections for ``transport`` and the ``--set`` values, as TOML data. A
    stream transport's server takes any free port (two runs, or a test beside, never collide);
    Asterisk is on this host, so loopback reaches it."""
    out: dict[str, dict[str, Any]] = {"media": {"transport": transport}}
    if transport == "audiosocket":
        out["audiosocket"] = {"port": 0}
    for item in sets:
        key, eq, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot or section not in TRANSPORT_SECTIONS or not name:
            raise ValueError(f"--set {item!r}: SECTION.KEY=VALUE with SECTION one of {', '.join(TRANSPORT_SECTIONS)}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]  # 0, 1.5, true, "x"
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: a string
        out.setdefault(section, {})[name.strip()] = value
    return out


def apply_transport(cfg: Any, transport: str, sets: list[str] | tuple[str, ...] = ()) -> Any:
    """Sets the transport's sections on an engine config (``AppConfig``), each value validated as
    the config file's would be; returns ``cfg``."""
    for section, values in transport_settings(transport, sets).items():
        for name, value in values.items():
            setattr(getattr(cfg, section), name, value)
    return cfg


def transport_toml(transport: str, sets: list[str] | tuple[str, ...] = ()) -> str:
    """The same sections as config file text, for an engine run as its own process."""
    lines = []
    for section, values in transport_settings(transport, sets).items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"
