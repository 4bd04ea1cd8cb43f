"""Configuration: pydantic models loaded from TOML, with per-host environment overrides.

Errors name the offending field (``rtp.port``) and the reason, so an operator can fix the file.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from providers.config import ConfigSection as _Section
from providers.config import ProvidersConfig
from providers.profile import DEFAULT_PROFILE, AgentProfile
from providers.redact import shown_url
from engine.sessions import PlaybackMode


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field and the reason."""


class AsteriskConfig(_Section):
    host: str = "127.0.0.1"
    ari_port: int = Field(8088, ge=1, le=65535)
    ari_scheme: Literal["http", "https"] = "http"
    ari_username: str = "aiagent"
    ari_password: SecretStr = SecretStr("")
    app: str = Field("aiagent", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # Calls beyond rtp.max_calls or the models' capacity (providers.local.max_active_calls, or
    # measured): "hangup" ends them (busy), "dialplan" hands them back (POST /channels/{id}/continue).
    over_capacity: Literal["hangup", "dialplan"] = "hangup"
    request_timeout_s: float = Field(5.0, gt=0)
    reconnect_initial_s: float = Field(0.25, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)

    @property
    def base_url(self) -> str:
        return f"{self.ari_scheme}://{self.host}:{self.ari_port}/ari"


class RtpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(18080, ge=0, le=65535)  # 0: any free port (tests)
    # Address Asterisk sends to (external_host). Defaults to host:port; set it when the engine
    # binds 0.0.0.0 or sits behind NAT.
    advertise_host: str | None = None
    format: Literal["ulaw"] = "ulaw"
    # Socket receive buffer: room for bursts while the loop is busy (4 MiB is ~1.5 s of 40 calls).
    # Above net.core.rmem_max it needs root (SO_RCVBUFFORCE); 0 keeps the kernel's default.
    receive_buffer_bytes: int = Field(4 * 1024 * 1024, ge=0, le=1 << 30)
    # Asterisk 22 segfaults when ExternalMedia runs out of RTP ports (BEHAVIOUR.md): keep this
    # under half the size of rtp.conf's rtpstart..rtpend range.
    max_calls: int = Field(40, ge=1)

    @model_validator(mode="after")
    def _reachable_address(self) -> RtpConfig:
        if self.host in ("0.0.0.0", "::", "") and not self.advertise_host:
            raise ValueError(f"advertise_host is required when host is {self.host!r}: Asterisk needs an address it can send to")
        return self


Transport = Literal["rtp", "audiosocket", "websocket"]
TRANSPORTS: tuple[Transport, ...] = ("rtp", "audiosocket", "websocket")


class MediaConfig(_Section):
    # How Asterisk hands each call's audio to the engine, unless the call's profile or its Stasis
    # argument (transport=NAME) says otherwise: "rtp" (ExternalMedia over UDP), "audiosocket"
    # (TCP), "websocket" (chan_websocket). docs/transports.md says which to pick when.
    transport: Transport = "rtp"


class AudioSocketConfig(_Section):
    host: str = "127.0.0.1"  # the engine's AudioSocket server (Asterisk connects to it)
    port: int = Field(18090, ge=0, le=65535)  # 0: any free port (tests)
    advertise_host: str | None = None  # the address Asterisk connects to, when not host
    # slin: 8 kHz; slin16: 16 kHz on the wire (the engine's audio path is 8 kHz: no wider band).
    format: Literal["slin", "slin16"] = "slin"
    # "channel": an ExternalMedia AudioSocket channel (transport=tcp, encapsulation=audiosocket);
    # "dialplan": a Local channel into dialplan_context, whose AudioSocket() line connects.
    form: Literal["channel", "dialplan"] = "channel"
    dialplan_context: str = "aiagent-audiosocket"
    connect_timeout_s: float = Field(5.0, gt=0)  # Asterisk's connection, after the channel is made
    # A connection whose UUID no call waits for is a call of its own: the site's dialplan runs
    # AudioSocket(${UUID()},HOST:PORT) instead of Stasis (engine/dialplan_calls.py). False: refused.
    dialplan_calls: bool = False

    @model_validator(mode="after")
    def _reachable_address(self) -> AudioSocketConfig:
        if self.host in ("0.0.0.0", "::", "") and not self.advertise_host:
            raise ValueError(f"advertise_host is required when host is {self.host!r}: Asterisk needs an address it can connect to")
        return self


class WebSocketMediaConfig(_Section):
    # "server": Asterisk serves the media WebSocket (on its HTTP port, beside ARI) and the engine
    # connects; "client": Asterisk connects to the engine's WebSocket server at host:port, through
    # the connection named client_connection in the PBX's websocket_client.conf.
    connection_type: Literal["server", "client"] = "server"
    format: Literal["ulaw", "slin", "slin16"] = "ulaw"
    host: str = "127.0.0.1"
    port: int = Field(18091, ge=0, le=65535)  # client mode: the engine's WebSocket server
    client_connection: str = "aiagent"
    connect_timeout_s: float = Field(5.0, gt=0)


class VadConfig(_Section):
    aggressiveness: int = Field(2, ge=0, le=3)  # webrtcvad mode: 0 lets most through, 3 is strictest
    start_ms: int = Field(60, ge=20, le=1000)  # voiced audio this long starts an utterance
    end_ms: int = Field(500, ge=100, le=5000)  # silence this long ends it (hangover)
    min_level_dbfs: float = Field(-50.0, le=0)  # frames quieter than this are never speech
    # With no speech found but audio arriving, hand what was heard to the provider this often,
    # so speech the VAD misses still reaches STT.
    fallback_interval_ms: int = Field(4000, ge=500, le=60000)
    preroll_ms: int = Field(300, ge=0, le=2000)  # audio kept from before the speech start


class BargeInConfig(_Section):
    enabled: bool = True
    min_ms: int = Field(200, ge=20, le=2000)  # caller speech this long during agent speech stops it
    # The agent pauses after this much caller speech (stream mode: the pacer holds; file mode: ARI
    # pauses the playing file), until min_ms confirms the barge-in (its audio is dropped) or the
    # caller goes quiet first (it resumes where it paused: a cough, a click, line echo). 0: no
    # pause, only the barge-in.
    pause_ms: int = Field(40, ge=0, le=2000)
    # Level a frame of caller speech must reach while the agent talks (after the agent's own
    # playback has been subtracted in file mode).
    min_level_dbfs: float = Field(-40.0, le=0)


class PlaybackConfig(_Section):
    downstream_mode: PlaybackMode = "stream"  # chosen by measurement: docs/benchmarks.md, "Which playback mode"
    file_chunk_ms: int = Field(400, ge=40, le=10000)  # agent audio per file in file mode
    timeout_margin_ms: int = Field(1500, ge=100, le=60000)  # PlaybackFinished overdue after duration + this
    gating_tail_ms: int = Field(60, ge=0, le=2000)  # capture stays muted this long after agent audio ends
    stream_queue_max_ms: int = Field(30000, ge=1000, le=600000)  # stream mode: queued agent audio cap





class HealthConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(15000, ge=0, le=65535)
    # A model job waiting longer than this for its model (the engine is over its capacity): /health
    # says degraded and the header names the queue.
    max_model_wait_s: float = Field(5.0, gt=0)




class ConsoleConfig(_Section):
    # The Unix socket ``aiagent-tui attach`` connects to; "": APP.sock in /run/aiagent-tui or a
    # per-user runtime directory (engine/console.py, console_socket).
    socket: str = ""


class StorageConfig(_Section):
    media_dir: Path = Path("/var/lib/aiagent/media")


class HistoryConfig(_Section):
    """The call history (engine/history.py)."""

    enabled: bool = True
    path: Path | None = None  # SQLite, when no url is given; None: history.sqlite3 beside storage.media_dir
    url: str = ""  # a database URL (postgresql+psycopg://USER:PASS@HOST/DB) instead of the file
    retention_days: float = Field(90.0, gt=0)
    max_calls: int = Field(100_000, ge=1)  # beyond this, the oldest calls go
    engine_name: str = ""  # this engine in a shared history; "": HOST:APP
    # Recordings of the profiles with record = true, one WAV per call, with the retention above.
    # None: "recordings" beside storage.media_dir (/var/lib/aiagent/recordings).
    recordings_dir: Path | None = None

    @field_validator("url")
    @classmethod
    def _url_readable(cls, v: str) -> str:
        if v:
            try:
                make_url(v)
            except ArgumentError:
                raise ValueError("not a database URL: sqlite:////var/lib/aiagent/history.sqlite3 or postgresql+psycopg://USER:PASS@HOST/DB") from None
        return v


class ActionsConfig(_Section):
    """Bringing a person into a call (engine/handoff.py; docs/operations.md, "Bringing a person in")."""

    # How, when the operator does not choose: introduce (the agent tells the person who is calling
    # and why, then connects them), bridge (connected at once), snoop (they listen to both sides
    # and can speak to the caller; the agent stays on).
    bring_in: Literal["introduce", "bridge", "snoop"] = "introduce"
    bring_in_ring_s: int = Field(30, ge=5, le=300)  # how long the person's phone rings before the caller is told nobody answered


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AppConfig(_Section):
    asterisk: AsteriskConfig = AsteriskConfig()
    rtp: RtpConfig = RtpConfig()
    media: MediaConfig = MediaConfig()
    audiosocket: AudioSocketConfig = AudioSocketConfig()
    websocket: WebSocketMediaConfig = WebSocketMediaConfig()
    health: HealthConfig = HealthConfig()
    console: ConsoleConfig = ConsoleConfig()
    providers: ProvidersConfig = ProvidersConfig()
    vad: VadConfig = VadConfig()
    barge_in: BargeInConfig = BargeInConfig()
    playback: PlaybackConfig = PlaybackConfig()
    storage: StorageConfig = StorageConfig()
    history: HistoryConfig = HistoryConfig()
    logging: LoggingConfig = LoggingConfig()
    actions: ActionsConfig = ActionsConfig()
    # [profiles.NAME]: who the agent is per dialled number; "default" takes every other call.
    profiles: dict[str, AgentProfile] = {DEFAULT_PROFILE: AgentProfile()}

    @model_validator(mode="after")
    def _profiles_valid(self) -> AppConfig:
        self.profiles.setdefault(DEFAULT_PROFILE, AgentProfile())
        claimed: dict[str, str] = {}
        for name, p in self.profiles.items():
            self.providers.check_name(f"profiles.{name}.provider", p.provider)
            for key in p.match:
                if key in claimed:
                    raise ValueError(f"profiles.{claimed[key]} and profiles.{name} both match {key!r}")
                claimed[key] = name
        return self

    def transport_for(self, stasis_args: Sequence[str], profile: str) -> Transport:
        """A call's media transport: its Stasis argument transport=NAME, else its profile's, else
        media.transport. An unknown name in the dialplan is the site's mistake: the default, said
        in the call's log by call control."""
        for arg in stasis_args:
            key, _, value = arg.partition("=")
            if key.strip() == "transport" and value.strip() in TRANSPORTS:
                return value.strip()  # type: ignore[return-value]
        return self.profiles[profile].transport or self.media.transport

    def profile_for(self, stasis_args: Sequence[str], dialled: str) -> str:
        """The profile of a new call: the first Stasis argument a profile matches, else the dialled
        extension, else the default."""
        for key in (*stasis_args, dialled):
            for name, p in self.profiles.items():
                if key and key in p.match:
                    return name
        return DEFAULT_PROFILE

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked (for check-config and logs)."""
        data = self.model_dump(mode="json")
        data["asterisk"]["ari_password"] = "********" if self.asterisk.ari_password.get_secret_value() else ""
        data["history"]["url"] = shown_url(self.history.url)
        for name, server in self.providers.servers.items():
            data["providers"]["servers"][name]["url"] = shown_url(server.url)
        for name, profile in self.profiles.items():
            # What the free-text facts were read as: the operator confirms it (answers are held to it).
            read = profile.facts_read.model_dump(mode="json", exclude_defaults=True)
            if read:
                data["profiles"][name]["facts_read_as"] = read
        return data


# What a reload (SIGHUP, the console's R) applies to the calls that start after it: who the agent
# is, how speech is found, how audio goes out, the log level, the default provider. Everything
# else (ports, ARI, models, servers, storage, history) is bound at start: named, applied at restart.
LIVE_SECTIONS = ("profiles", "vad", "barge_in", "playback", "logging", "actions")
LIVE_SETTINGS = ("providers.default",)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    config: AppConfig  # the running config with what a reload applies
    applied: tuple[str, ...]  # dotted settings that changed and apply to new calls
    restart: tuple[str, ...]  # dotted settings that changed and wait for a restart
    removed_profiles: tuple[str, ...] = ()  # profiles the file no longer has: their callers get the default


_MISSING = object()


def _changed(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in dict.fromkeys([*old, *new]):
            if old.get(key, _MISSING) != new.get(key, _MISSING):
                out += _changed(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [path] if old != new else []


def plan_reload(running: AppConfig, new: AppConfig) -> ReloadPlan:
    """What reloading ``new`` over ``running`` changes. Raises ConfigError when the result would not
    be a valid config (a profile naming a provider that only a restart would add)."""
    changed = _changed(running.model_dump(mode="json"), new.model_dump(mode="json"), "")
    removed = tuple(name for name in running.profiles if name not in new.profiles)
    # A removed profile is named as removed, not as one more changed setting.
    changed = [c for c in changed if c not in {f"profiles.{name}" for name in removed}]
    live = [c for c in changed if c.split(".")[0] in LIVE_SECTIONS or c in LIVE_SETTINGS]
    restart = [c for c in changed if c not in live]
    update: dict[str, Any] = {name: getattr(new, name) for name in LIVE_SECTIONS}
    update["providers"] = running.providers.model_copy(update={"default": new.providers.default})
    try:
        merged = AppConfig.model_validate({**running.model_dump(), **update})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, {}) + "\n  (with the running providers: a new one needs a restart)") from None
    return ReloadPlan(merged, tuple(live), tuple(restart), removed)


# Environment variable -> dotted config field. Operators set these per host.
ENV_OVERRIDES: dict[str, str] = {
    "ASTERISK_HOST": "asterisk.host",
    "ASTERISK_ARI_PORT": "asterisk.ari_port",
    "ASTERISK_ARI_USERNAME": "asterisk.ari_username",
    "ASTERISK_ARI_PASSWORD": "asterisk.ari_password",
    "ARI_APP": "asterisk.app",
    "RTP_HOST": "rtp.host",
    "RTP_PORT": "rtp.port",
    "HEALTH_HOST": "health.host",
    "HEALTH_PORT": "health.port",
    "AIAGENT_CONSOLE_SOCKET": "console.socket",
    "AIAGENT_PROVIDER": "providers.default",
    "AIAGENT_MAX_CALLS": "rtp.max_calls",
    "AIAGENT_MEDIA_DIR": "storage.media_dir",
    "AIAGENT_HISTORY": "history.enabled",
    "AIAGENT_HISTORY_PATH": "history.path",
    "AIAGENT_HISTORY_URL": "history.url",
    "AIAGENT_DOWNSTREAM_MODE": "playback.downstream_mode",
    "LOCAL_STT_ENGINE": "providers.local.stt_engine",
    "LOCAL_STT_MODEL_PATH": "providers.local.stt_model_path",
    "LOCAL_STT_THREADS": "providers.local.stt_threads",
    "LOCAL_STT_COMPUTE_TYPE": "providers.local.stt_compute_type",
    "LOCAL_LLM_MODEL_PATH": "providers.local.llm_model_path",
    "LOCAL_LLM_MODEL": "providers.local.llm_model",
    "LOCAL_LLM_CHAT_FORMAT": "providers.local.llm_chat_format",
    "LOCAL_LLM_MAX_TOKENS": "providers.local.llm_max_tokens",
    "LOCAL_LLM_THREADS": "providers.local.llm_threads",
    "LOCAL_LLM_CONTEXT": "providers.local.llm_context",
    "LOCAL_LLM_TEMPERATURE": "providers.local.llm_temperature",
    "LOCAL_TTS_VOICE_PATH": "providers.local.tts_voice_path",
    "LOCAL_TTS_THREADS": "providers.local.tts_threads",
    "AIAGENT_FALLBACK_PROVIDER": "providers.fallback",
    "DEEPGRAM_AGENT_URL": "providers.deepgram.agent_url",
}


SERVER_ENV = re.compile(r"^AIAGENT_SERVER_([A-Z0-9_]+)_(URL|MODEL)$")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents)}: expected a table, got {type(child).__name__}")
        node = child
    node[leaf] = value


def _format_validation_error(err: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        origin = sources.get(field)
        where = f" (from environment variable {origin})" if origin else ""
        lines.append(f"{field}: {e['msg']}{where}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = "config.toml", env: Mapping[str, str] | None = None) -> AppConfig:
    """Load TOML (if given and present), apply environment overrides, validate. Every failure is
    a ConfigError that names the file (or the environment variable) and what is wrong."""
    return _load(path, os.environ if env is None else env)[0]


def reload_config(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[AppConfig, tuple[str, ...]]:
    """The file again, for a reload of a running engine, and the settings the file sets but the
    environment overrides ("rtp.port (RTP_PORT)": the file's value has no effect). Unlike at start,
    the file must be there and say something: a file moved away or emptied (a careless cleanup, an
    editor's half-written save) would otherwise reload as "all defaults" and drop every profile."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found (moved or deleted?): nothing to reload")
    config, file_data, sources = _load(p, os.environ if env is None else env)
    if not file_data:
        raise ConfigError(f"{p}: the file is empty (no settings): a reload of it would put every setting back to its default")
    env = os.environ if env is None else env
    overridden = []
    for dotted, var in sources.items():
        node: Any = file_data
        for key in dotted.split("."):
            node = node.get(key, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING and str(node).lower() != env[var].lower():
            overridden.append(f"{dotted} ({var})")
    return config, tuple(overridden)


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def _load(path: str | Path | None, env: Mapping[str, str]) -> tuple[AppConfig, dict[str, Any], dict[str, str]]:
    """The config, what the file itself said (before the environment), and which dotted settings
    the environment set (-> its variable)."""
    data: dict[str, Any] = {}
    where = "configuration (defaults and environment)"
    if path is not None:
        p = Path(path)
        if p.exists():
            where = str(p)
            data = _read_toml(p)
        elif str(path) != "config.toml":
            # Only the implicit default may be absent; an explicit path must exist.
            raise ConfigError(f"{p}: config file not found")
    file_data = copy.deepcopy(data)
    sources: dict[str, str] = {}
    for var, dotted in ENV_OVERRIDES.items():
        if var in env and env[var] != "":
            try:
                _set_dotted(data, dotted, env[var])
            except ConfigError as e:
                raise ConfigError(f"{where}: {e} (while applying environment variable {var})") from None
            sources[dotted] = var
    # A model server's address and model per host: AIAGENT_SERVER_<NAME>_URL / _MODEL, NAME as in
    # [providers.servers.NAME], upper case, "-" as "_".
    servers = data.get("providers", {}).get("servers", {}) if isinstance(data.get("providers"), dict) else {}
    for var, value in env.items():
        m = SERVER_ENV.match(var)
        if not m or value == "":
            continue
        name = next((n for n in servers if n.upper().replace("-", "_") == m[1]), None)
        if name is None:
            raise ConfigError(f"{where}: environment variable {var}: there is no [providers.servers.*] named {m[1].lower().replace('_', '-')!r}")
        dotted = f"providers.servers.{name}.{m[2].lower()}"
        _set_dotted(data, dotted, value)
        sources[dotted] = var
    try:
        return AppConfig.model_validate(data), file_data, sources
    except ValidationError as e:
        raise ConfigError(f"{where}: {_format_validation_error(e, sources)}") from None
