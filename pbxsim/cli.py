"""``aiagent-sim``: a simulated Asterisk (ARI + ExternalMedia) and simulated callers."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from pathlib import Path

DEFAULT_WAV = "/usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.wav"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiagent-sim", description="Simulated Asterisk 22 PBX for aiagent-tui")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the simulated PBX (ARI on HTTP/WebSocket, ExternalMedia over RTP)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8088)
    s.add_argument("--app", default="aiagent", help="informational: apps register by connecting their WebSocket")
    s.add_argument("--username", default="aiagent")
    s.add_argument("--password", default="")
    s.add_argument("--rtp-start", type=int, default=20000, help="first RTP port for ExternalMedia (rtp.conf rtpstart)")
    s.add_argument("--rtp-end", type=int, default=20998, help="last RTP port (rtp.conf rtpend)")
    a = sub.add_parser("asterisk", help="run a real Asterisk 22 (../shared/asterisk/) with the project's dialplan, and callers on it "
                                          "driven by the simulator's call API (/sim/calls)")
    a.add_argument("--ari-port", type=int, default=8088, help="Asterisk's HTTP/ARI port (user ari, password ari)")
    a.add_argument("--port", type=int, default=8089, help="the call API's port (POST /sim/calls, GET /sim/calls/ID)")
    a.add_argument("--run-dir", help="Asterisk's run directory (default: a new temporary one)")
    a.add_argument("--rtp-ports", type=int, default=200, help="size of Asterisk's RTP port range (rtp.conf): each call's ExternalMedia takes an even port, "
                   "and Asterisk 22 crashes when they run out: at least 4 per call (the caller's and the engine's channels)")
    c = sub.add_parser("call", help="place simulated calls into an app and write a JSON report")
    c.add_argument("--ari", default="http://127.0.0.1:8088", help="the simulator's URL")
    c.add_argument("--app", default="aiagent")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--wav", default=DEFAULT_WAV, help="what each caller says (16-bit WAV, any rate)")
    c.add_argument("--hold", type=float, default=2.0, help="seconds to stay on the line after speaking")
    c.add_argument("--converse", action="store_true", help="wait for the agent's greeting, speak, wait for its answer, then hold")
    c.add_argument("--report", help="write the JSON report here (default: stdout)")
    return p


async def _serve(args: argparse.Namespace) -> int:
    from pbxsim.server import SimPBX

    pbx = SimPBX(username=args.username, password=args.password, rtp_host=args.host, rtp_start=args.rtp_start, rtp_end=args.rtp_end)
    try:
        await pbx.start(args.host, args.port)
    except OSError as e:
        await pbx.stop()
        print(f"aiagent-sim: cannot serve ARI on {args.host}:{args.port}/tcp: {e.strerror or e}; choose another with --port", file=sys.stderr)
        return 1
    print(f"aiagent-sim: ARI on http://{args.host}:{pbx.port}/ari (user {args.username}); dialplan equivalent: Stasis({args.app})", flush=True)
    gc.freeze()  # startup's objects out of the collector's passes: shorter stalls of every caller's 20 ms clock
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await pbx.stop()
    if pbx.violations:
        print(f"aiagent-sim: {len(pbx.violations)} ARI schema violation(s):", file=sys.stderr)
        for v in pbx.violations[:50]:
            print(f"  {v}", file=sys.stderr)
    return 0


async def _asterisk(args: argparse.Namespace) -> int:
    import tempfile

    from pbxsim.asterisk import AsteriskCallers, AsteriskInstance, AsteriskNotFound, CallersServer, rtp_range, shared_asterisk

    try:
        shared = shared_asterisk(Path(__file__).resolve().parent.parent)
    except AsteriskNotFound as e:
        print(f"aiagent-sim: {e}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="aiagent-asterisk-"))
    inst = AsteriskInstance(shared, run_dir, http_port=args.ari_port, rtp_range=rtp_range(args.rtp_ports))
    await asyncio.to_thread(inst.start)
    callers = AsteriskCallers(inst)
    server = CallersServer(callers)
    try:
        await callers.start()
        await server.start("127.0.0.1", args.port)
        print(f"aiagent-sim: Asterisk 22 (PID {inst.pid}) ARI on {inst.url}/ari (user ari/ari); callers' API on http://127.0.0.1:{args.port}/sim/calls", flush=True)
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await server.stop()
        await callers.stop()
        await asyncio.to_thread(inst.stop)
        if not args.run_dir:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


async def _call(args: argparse.Namespace) -> int:
    from pbxsim.client import run_calls

    if not Path(args.wav).is_file():
        print(f"aiagent-sim: no such WAV file: {args.wav} (Debian: apt-get install asterisk-core-sounds-en-wav)", file=sys.stderr)
        return 2
    report = await run_calls(args.ari, args.count, str(Path(args.wav).resolve()), args.hold, app=args.app, converse=args.converse)
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).write_text(text)
        ok = sum(1 for c in report["calls"] if c["bridged"] and c["hangup_clean"])
        print(f"aiagent-sim: {ok}/{len(report['calls'])} calls bridged and cleaned up; "
              f"leftover channels {report['leftover_channels']}, bridges {report['leftover_bridges']}; report in {args.report}")
    else:
        print(text)
    clean = report["leftover_channels"] == 0 and report["leftover_bridges"] == 0 and all(c["bridged"] for c in report["calls"])
    return 0 if clean else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        commands = {"serve": _serve, "asterisk": _asterisk, "call": _call}
        return asyncio.run(commands[args.command](args))
    except OSError as e:
        print(f"aiagent-sim: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
