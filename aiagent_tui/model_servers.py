"""The project's own models as standard model servers: llama.cpp's server (llama-server, the
OpenAI-compatible API, parallel slots) for the LLM, wyoming-faster-whisper for STT and wyoming-piper for TTS, all from the packages
the setup installs and the model files it verified. ``aiagent-tui model-servers`` runs them on a
model box; the tests and bench/turn_latency.py start them the same way.

Nothing here downloads: each server is pointed at a file or directory that is already on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from providers.config import LocalProviderConfig
from providers.local.models import JOE_VOICE, WHISPER_TINY_EN, resolve, resolve_llm

START_TIMEOUT_S = 120.0


@dataclass
class ServerSpec:
    name: str  # "llm", "stt", "tts": the stage it serves, and its [providers.servers.NAME]
    api: str  # "openai" or "wyoming"
    host: str
    port: int
    argv: list[str]
    _: KW_ONLY
    model: str = ""  # the name to ask for (the LLM's alias)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1" if self.api == "openai" else f"tcp://{self.host}:{self.port}"


def llama_server() -> Path:
    """llama.cpp's server, built by the setup (scripts/build_llama_server.sh) beside this Python."""
    path = Path(sys.executable).parent / "llama-server"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: scripts/setup.sh builds it (scripts/build_llama_server.sh)")
    return path


def server_specs(cfg: LocalProviderConfig, host: str = "127.0.0.1", llm_port: int = 8000, stt_port: int = 10300, tts_port: int = 10200,
                 threads: int = 2, parallel: int = 4, data_dir: Path | None = None) -> list[ServerSpec]:
    """The three servers' command lines, with the models ``cfg`` names (the packaged ones by
    default). ``data_dir``: where the Wyoming servers may keep their state (nothing is fetched)."""
    py = sys.executable
    llm = resolve_llm(cfg.llm_model, cfg.llm_model_path)
    whisper = resolve(WHISPER_TINY_EN, cfg.stt_model_path)
    voice = resolve(JOE_VOICE, cfg.tts_voice_path)
    data = str(data_dir or Path(tempfile.gettempdir()) / "aiagent-model-servers")
    return [
        ServerSpec("llm", "openai", host, llm_port, [
            str(llama_server()), "--model", str(llm), "--alias", cfg.llm_model, "--host", host, "--port", str(llm_port),
            # Parallel slots (continuous batching: callers answered together, not in series), each
            # with the context one call needs; tool calls through the model's own chat template.
            "--parallel", str(parallel), "--ctx-size", str(cfg.llm_context * parallel), "--threads", str(threads),
            "--jinja", "--no-webui",
        ], model=cfg.llm_model),
        ServerSpec("stt", "wyoming", host, stt_port, [
            py, "-m", "wyoming_faster_whisper", "--uri", f"tcp://{host}:{stt_port}", "--model", str(whisper),
            "--data-dir", data, "--local-files-only", "--language", "en", "--beam-size", str(cfg.stt_beam_size),
            "--cpu-threads", str(threads), "--compute-type", cfg.stt_compute_type,
        ]),
        ServerSpec("tts", "wyoming", host, tts_port, [
            py, "-m", "wyoming_piper", "--uri", f"tcp://{host}:{tts_port}", "--voice", str(voice), "--data-dir", data,
        ]),
    ]


def config_snippet(specs: list[ServerSpec], pipeline: str = "remote", fallback: str = "local") -> str:
    """What config.toml needs to use these servers as a pipeline."""
    lines = []
    for s in specs:
        lines += [f"[providers.servers.{s.name}]", f'api = "{s.api}"', f'url = "{s.url}"', *([f'model = "{s.model}"'] if s.model else []), ""]
    lines += [f"[providers.pipelines.{pipeline}]", *(f'{s.name} = "{s.name}"' for s in sorted(specs, key=lambda s: "stt llm tts".index(s.name))), f'fallback = "{fallback}"']
    return "\n".join(lines)


def _answers(s: ServerSpec) -> bool:
    if s.api == "openai":
        try:
            with urllib.request.urlopen(f"http://{s.host}:{s.port}/health", timeout=1):
                return True
        except urllib.error.HTTPError as e:
            return e.code != 503  # llama-server's answer while its model loads; a 404: no such route, but up
        except OSError:
            return False
    with contextlib.suppress(OSError), socket.create_connection((s.host, s.port), timeout=1):
        return True
    return False


@dataclass
class ModelServers:
    """The servers as child processes (each in its own process group): started together, each
    waited for until it accepts connections, stopped (SIGTERM, then SIGKILL) together. Plain
    subprocesses, not asyncio's, so that they outlive any one event loop (a test module's servers
    serve every test's loop)."""

    specs: list[ServerSpec]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, only: tuple[str, ...] = ()) -> None:
        wanted = [s.name for s in self.specs if not only or s.name in only]
        for name in wanted:
            self.start_one(name)
        for name in wanted:
            self.wait_ready(name)

    def spec(self, name: str) -> ServerSpec:
        return next(s for s in self.specs if s.name == name)

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}-server.log"

    def start_one(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file(name), "ab") as out:
            self.procs[name] = subprocess.Popen(self.spec(name).argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT_S) -> None:
        """Until the server is ready for jobs: llama-server's /health says so once its model is
        loaded (503 before); the Wyoming servers listen only then."""
        s, proc = self.spec(name), self.procs[name]
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} server exited with status {proc.returncode}; see {self.log_file(name)}")
            if _answers(s):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} server not listening on {s.host}:{s.port} after {timeout:.0f} s; see {self.log_file(name)}")
            time.sleep(0.2)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def stop_one(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        self.kill(name, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill(name)
            proc.wait()

    def restart(self, name: str) -> None:
        self.stop_one(name)
        self.start_one(name)
        self.wait_ready(name)

    def stop(self) -> None:
        for name in self.procs:
            self.stop_one(name)

    def __enter__(self) -> ModelServers:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def serve(cfg: LocalProviderConfig, host: str, llm_port: int, stt_port: int, tts_port: int, threads: int, parallel: int, log_dir: Path) -> int:
    """``aiagent-tui model-servers``: runs the three until one exits or SIGTERM/SIGINT comes."""
    specs = server_specs(cfg, host, llm_port, stt_port, tts_port, threads, parallel)
    for s in specs:
        print(f"# {s.name}: {shlex.join(s.argv)}")
    servers = ModelServers(specs, log_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.to_thread(servers.start)
    except RuntimeError as e:
        print(f"aiagent-tui model-servers: {e}", file=sys.stderr)
        await asyncio.to_thread(servers.stop)
        return 1
    print("\n# config.toml of each engine that uses them (replace the host if the engine is elsewhere):")
    print(config_snippet(specs), flush=True)
    code = 0
    while not stop.is_set():
        dead = [n for n, p in servers.procs.items() if p.poll() is not None]
        if dead:
            print(f"aiagent-tui model-servers: {', '.join(dead)} server exited (see {log_dir}); stopping the others", file=sys.stderr)
            code = 1
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await asyncio.to_thread(servers.stop)
    return code
