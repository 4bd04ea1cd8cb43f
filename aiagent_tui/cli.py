"""``aiagent-tui``: the terminal app, the headless service (--no-ui) and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path

from aiagent_tui import history_cli
from aiagent_tui.paths import state_dir
from engine.config import AppConfig, ConfigError, load_config
from engine.diagnosis import diagnose_in
from engine.history import database_url
from engine.engine import EngineStartError


PROVIDER_HELP = "provider for new calls, as AIAGENT_PROVIDER (providers.default): local, deepgram, echo, tone or a [providers.pipelines.NAME]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiagent-tui", description="AI voice agent for Asterisk (ARI + ExternalMedia)")
    p.add_argument("--config", default="config.toml", help="TOML config file (default ./config.toml)")
    p.add_argument("--provider", help=PROVIDER_HELP)
    p.add_argument("--no-ui", action="store_true", help="run the engine as a headless service")
    p.add_argument("--sim", action="store_true", help="start the built-in PBX simulator too, and place a demo call every few seconds")
    p.add_argument("--demo-interval", type=float, default=8.0, help="seconds between demo calls with --sim (default 8)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override logging.level")
    sub = p.add_subparsers(dest="command")
    # The commands that read the config as an engine would take --provider after their name too
    # (SUPPRESS: absent there, it does not undo one given before the command's name).
    provider = argparse.ArgumentParser(add_help=False)
    provider.add_argument("--provider", default=argparse.SUPPRESS, help=PROVIDER_HELP)
    sub.add_parser("check-config", parents=[provider], help="validate the config and print the effective values (secrets masked)")
    sub.add_parser("doctor", parents=[provider], help="check ARI, ports, media directory, models, model servers and keys; one line per check with the fix")
    at = sub.add_parser("attach", help="the terminal app on an engine already running on this machine (a headless service); q detaches")
    at.add_argument("--socket", help="its console socket (default: from the config's console.socket and asterisk.app)")
    ms = sub.add_parser("model-servers", help="serve this project's models as standard model servers (llama.cpp's server, Wyoming Whisper and Piper) for engines elsewhere")
    ms.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for engines on other hosts)")
    ms.add_argument("--llm-port", type=int, default=8000)
    ms.add_argument("--stt-port", type=int, default=10300)
    ms.add_argument("--tts-port", type=int, default=10200)
    ms.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads per model")
    ms.add_argument("--parallel", type=int, default=4, help="callers the LLM answers at once (llama-server's slots; default 4)")
    ms.add_argument("--log-dir", default="/tmp/aiagent-model-servers", help="each server's log file goes here")
    history_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.provider is not None and args.command in ("attach", "model-servers", "calls"):
        # Not silently ignored: these start no engine (attached, p in the app chooses).
        parser.error(f"--provider is for a command that runs or checks an engine (the app, --no-ui, check-config, doctor), not {args.command}"
                     + ("; in the attached app, p chooses the provider for new calls" if args.command == "attach" else ""))
    try:
        config = load_config(args.config)
        if args.provider is not None:
            config = _with_provider(config, args)
    except ConfigError as e:
        print(f"aiagent-tui: {e}", file=sys.stderr)
        return 2
    if args.config == "config.toml" and not Path("config.toml").exists():
        # The default file may be absent, but the operator must know the defaults are in use.
        # A note, not an error line ("aiagent-tui: ..." is kept for what stops the command).
        print(f"note: no config.toml in {Path.cwd()}: using the defaults and the environment (--config PATH reads another file)", file=sys.stderr)
    if args.command == "check-config":
        from aiagent_tui.doctor import local_models_problem

        print(json.dumps(config.masked(), indent=2))
        # The model files too, as cheaply as every start looks at them (doctor checks their sha256).
        if (problem := local_models_problem(config)) is not None:
            print(f"aiagent-tui: {problem}", file=sys.stderr)
            return 1
        return 0
    if args.command == "model-servers":
        from aiagent_tui.model_servers import serve

        return asyncio.run(serve(config.providers.local, args.host, args.llm_port, args.stt_port, args.tts_port, args.threads, args.parallel, Path(args.log_dir)))
    if args.command == "attach":
        return _attach(config, args)
    if args.command == "calls":
        return history_cli.main(config, args)
    if args.command == "doctor":
        from aiagent_tui.doctor import main as doctor

        return doctor(config)
    if not args.no_ui:
        return _run_app(config, args)
    logging.basicConfig(
        level=args.log_level or config.logging.level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    from aiagent_tui.runtime import Runtime
    from aiagent_tui.service import run_headless

    try:
        return asyncio.run(run_headless(Runtime(config, sim=args.sim, demo_interval_s=args.demo_interval, config_path=args.config)))
    except EngineStartError as e:
        print(f"aiagent-tui: {e}", file=sys.stderr)
        return 1


def _with_provider(config: AppConfig, args: argparse.Namespace) -> AppConfig:
    """The config with --provider as the provider for new calls. The name as the operator typed it
    (any case); one the config does not know is refused with the ones it does. Set as the
    environment variable it stands for, so that a reload (R, SIGHUP) keeps it as it keeps the
    environment's."""
    names = config.providers.names
    name = next((n for n in names if n.lower() == args.provider.strip().lower()), None)
    if name is None:
        raise ConfigError(f"--provider {args.provider!r}: unknown provider; known: {', '.join(sorted(names))}")
    os.environ["AIAGENT_PROVIDER"] = name
    return load_config(args.config)


def _history_url(config: AppConfig) -> str | None:
    return database_url(config) if config.history.enabled else None


def _attach(config: AppConfig, args: argparse.Namespace) -> int:
    from aiagent_tui.app import AiAgentApp
    from aiagent_tui.attach import AttachRuntime
    from engine.console import console_socket

    path = Path(args.socket) if args.socket else console_socket(config.asterisk.app, config.console.socket)
    app = AiAgentApp(AttachRuntime(path), history_url=_history_url(config), diagnose_call=partial(diagnose_in, config))
    result = app.run()
    return result if isinstance(result, int) else app.exit_code


def _run_app(config: AppConfig, args: argparse.Namespace) -> int:
    # The screen is the app's: log lines go to a file in the state directory, not over the panes.
    state = state_dir()
    logging.basicConfig(
        level=args.log_level or config.logging.level,
        filename=str(state / "aiagent-tui.log"),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    from aiagent_tui.app import AiAgentApp
    from aiagent_tui.runtime import Runtime

    runtime = Runtime(config, sim=args.sim, demo_interval_s=args.demo_interval, config_path=args.config)
    # Against the norms as the last reload left them.
    app = AiAgentApp(runtime, history_url=_history_url(config), diagnose_call=lambda rec: diagnose_in(runtime.config, rec))
    result = app.run()
    return result if isinstance(result, int) else app.exit_code


if __name__ == "__main__":
    sys.exit(main())
