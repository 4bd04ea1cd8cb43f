"""A model file that is there but broken (another format, truncated, corrupt) is named with the
reason and what to do, for each local model (Whisper, llama.cpp, Piper): at the startup's cheap
look, from the worker process that failed to load it, in the engine's start error and /health,
and in doctor (with the sha256 its install recorded)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from aiagent_tui.doctor import _local_models_check
from providers.config import LocalProviderConfig
from providers.local import models
from providers.local.models import JOE_VOICE, SMOLLM2, WHISPER_TINY_EN, ModelUnusable, resolve
from providers.local.workers import ModelWorker
from providers.pipeline import check_model_files
from tests.conftest import BIN, ROOT, free_port, get_json, stop_processes, wait_until

GARBAGE = bytes(range(256)) * 64


def whisper_copy(tmp_path: Path, model_bin: bytes) -> Path:
    """The packaged Whisper directory with its model.bin replaced (the rest linked)."""
    src = resolve(WHISPER_TINY_EN, "")
    d = tmp_path / "whisper"
    d.mkdir()
    for f in src.iterdir():
        if f.name != "model.bin":
            (d / f.name).symlink_to(f)
    (d / "model.bin").write_bytes(model_bin)
    return d


def voice_copy(tmp_path: Path, onnx: bytes) -> Path:
    src = resolve(JOE_VOICE, "")
    v = tmp_path / "voice.onnx"
    v.write_bytes(onnx)
    shutil.copy(src.with_name(src.name + ".json"), tmp_path / "voice.onnx.json")
    return v


def head_of(path: Path, n: int = 1 << 20) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def garbage(kind: str, tmp_path: Path) -> tuple[LocalProviderConfig, Path, str]:
    """A config whose ``kind`` model is garbage: (config, the file, the reason expected)."""
    if kind == "stt":
        d = whisper_copy(tmp_path, GARBAGE)
        return LocalProviderConfig(stt_model_path=str(d)), d, "model.bin is not a CTranslate2 model"
    if kind == "llm":
        f = tmp_path / "x.gguf"
        f.write_bytes(GARBAGE)
        return LocalProviderConfig(llm_model_path=str(f)), f, "not a GGUF file (bad magic b'\\x00\\x01\\x02\\x03', not b'GGUF')"
    v = voice_copy(tmp_path, GARBAGE)
    return LocalProviderConfig(tts_voice_path=str(v)), v, "not an ONNX model"


def truncated(kind: str, tmp_path: Path) -> tuple[LocalProviderConfig, Path]:
    """A config whose ``kind`` model is the real one cut after its first megabyte: its header
    passes the cheap look, only loading it finds it broken."""
    if kind == "stt":
        d = whisper_copy(tmp_path, head_of(resolve(WHISPER_TINY_EN, "") / "model.bin"))
        return LocalProviderConfig(stt_model_path=str(d)), d
    if kind == "llm":
        f = tmp_path / "cut.gguf"
        f.write_bytes(head_of(resolve(SMOLLM2, "")))
        return LocalProviderConfig(llm_model_path=str(f)), f
    v = voice_copy(tmp_path, head_of(resolve(JOE_VOICE, "")))
    return LocalProviderConfig(tts_voice_path=str(v)), v


KINDS = ["stt", "llm", "tts"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_startup_look_names_a_garbage_model_file_and_why(kind, tmp_path):
    cfg, path, reason = garbage(kind, tmp_path)
    with pytest.raises(ModelUnusable) as e:
        check_model_files(cfg)
    msg = str(e.value)
    assert f"{kind} " in msg and f"{path} cannot be loaded: " in msg and reason in msg, msg
    assert "check providers.local." in msg  # the setting that points at it


@pytest.mark.parametrize("kind", KINDS)
async def test_a_worker_that_cannot_load_its_model_says_which_file_and_why(kind, tmp_path):
    """Not "llm model worker did not start: exited with status 1": the process reports the
    loader's own reason before it exits."""
    cfg, path = truncated(kind, tmp_path)
    check_model_files(cfg)  # the header is fine: only loading finds it broken
    worker = ModelWorker(kind, cfg.model_dump(mode="json"), max_queue=4)
    with pytest.raises(RuntimeError) as e:
        await worker.start()
    msg = str(e.value)
    assert msg.startswith(f"{kind} ") and f"{path} cannot be loaded: " in msg and "(corrupt or truncated?)" in msg, msg
    assert "exited with status" not in msg
    assert worker.status().last_error == msg


def engine_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "RTP_PORT": str(free_port(socket.SOCK_DGRAM)), "HEALTH_PORT": str(free_port()), "AIAGENT_MEDIA_DIR": str(tmp_path),
        "AIAGENT_CONSOLE_SOCKET": str(tmp_path / "console.sock"), "AIAGENT_HISTORY": "false", **extra,
    }


def test_the_headless_service_stops_with_the_models_file_and_reason(tmp_path):
    _, path = truncated("llm", tmp_path)
    r = subprocess.run(
        [BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--no-ui", "--provider", "local"],
        env=engine_env(tmp_path, LOCAL_LLM_MODEL_PATH=str(path)), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"aiagent-tui: provider local cannot start: llm model {path} cannot be loaded: ValueError: Failed to load model"), last
    assert "Traceback" not in r.stderr


def test_health_shows_why_a_fallback_model_did_not_load(tmp_path):
    """The engine runs on its default (echo); its fallback (local) did not load: /health says
    which file and why, not "not loaded"."""
    _, path = truncated("llm", tmp_path)
    env = engine_env(tmp_path, LOCAL_LLM_MODEL_PATH=str(path), AIAGENT_PROVIDER="echo", AIAGENT_FALLBACK_PROVIDER="local")
    eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(ROOT / "config.toml"), "--no-ui"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    health = f"http://127.0.0.1:{env['HEALTH_PORT']}/health"
    try:
        local = wait_until(lambda: (p := get_json(health)[1]["providers"]["local"]) and "cannot start" in p["detail"] and p, timeout=60)
        assert not local["ready"] and f"llm model {path} cannot be loaded: ValueError: Failed to load model" in local["detail"]
    finally:
        stop_processes(eng)


def test_doctor_names_a_garbage_model(tmp_path):
    cfg, path, reason = garbage("tts", tmp_path)
    check = _local_models_check(cfg)
    assert check.ok is False and f"tts voice {path} cannot be loaded: {reason}" in check.detail


def test_doctor_checks_the_installed_models_sha256(monkeypatch):
    cfg = LocalProviderConfig()
    check = _local_models_check(cfg)
    assert check.ok and "3 of 3 sha256-checked" in check.detail, check.detail
    # A file whose bytes are not those its install recorded (same size, other content).
    monkeypatch.setattr(models, "expected_sha256", lambda spec, path: "0" * 64 if spec is JOE_VOICE else None)
    check = _local_models_check(cfg)
    assert check.ok is False and f"tts voice {resolve(JOE_VOICE, '')} is not what its install wrote" in check.detail


def test_check_config_names_a_garbage_model_of_a_provider_in_use(tmp_path, monkeypatch, capsys):
    from aiagent_tui.cli import main

    _, path, reason = garbage("llm", tmp_path)
    monkeypatch.setenv("LOCAL_LLM_MODEL_PATH", str(path))
    monkeypatch.setenv("AIAGENT_PROVIDER", "")
    config = str(ROOT / "config.toml")
    assert main(["--config", config, "check-config"]) == 0  # echo: the local models are not used
    capsys.readouterr()
    assert main(["--config", config, "--provider", "local", "check-config"]) == 1
    err = capsys.readouterr().err
    assert f"aiagent-tui: llm model {path} cannot be loaded: {reason}" in err
