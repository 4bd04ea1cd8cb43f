from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_valid_and_matches_defaults():
    assert load_config(ROOT / "config.toml", env={}) == load_config(None, env={})


def test_environment_overrides_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[asterisk]\nhost = "10.1.1.1"\n[rtp]\nport = 19000\n')
    cfg = load_config(f, env={"ASTERISK_HOST": "pbx.lan", "ASTERISK_ARI_PASSWORD": "s3cret", "ARI_APP": "aiagent-2", "RTP_PORT": "18090", "AIAGENT_PROVIDER": "echo"})
    assert cfg.asterisk.host == "pbx.lan"
    assert cfg.asterisk.app == "aiagent-2"
    assert cfg.asterisk.ari_password.get_secret_value() == "s3cret"
    assert cfg.rtp.port == 18090
    assert cfg.health.host == "127.0.0.1" and cfg.health.port == 15000


@pytest.mark.parametrize(
    "toml, env, expected",
    [
        ('[rtp]\nport = "many"\n', {}, "rtp.port: Input should be a valid integer"),
        ("[rtp]\nport = 70000\n", {}, "rtp.port: Input should be less than or equal to 65535"),
        ("[asterisk]\nhots = 'x'\n", {}, "asterisk.hots: Extra inputs are not permitted"),
        ("", {"HEALTH_PORT": "abc"}, "health.port: Input should be a valid integer, unable to parse string as an integer (from environment variable HEALTH_PORT)"),
        ("", {"AIAGENT_PROVIDER": "nosuch"}, "providers.default: Value error, unknown provider 'nosuch'"),
        ('[rtp]\nhost = "0.0.0.0"\n', {}, "rtp: Value error, advertise_host is required when host is '0.0.0.0'"),
        ("[rtp\n", {}, "not valid TOML"),
    ],
)
def test_bad_config_names_the_field_and_reason(tmp_path, toml, env, expected):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(f, env=env)
    assert expected in str(e.value)


def test_explicit_config_path_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "aiagent_tui.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_check_config_prints_effective_config_with_password_masked(tmp_path):
    import os

    env = {**os.environ, "ASTERISK_ARI_PASSWORD": "hunter2", "RTP_PORT": "18555"}
    r = _cli("--config", str(ROOT / "config.toml"), "check-config", env=env)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    data = json.loads(r.stdout)
    assert data["asterisk"]["ari_password"] == "********"
    assert data["rtp"]["port"] == 18555


def test_check_config_fails_naming_the_field(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[health]\nport = -1\n")
    r = _cli("--config", str(f), "check-config")
    assert r.returncode == 2
    assert "health.port" in r.stderr and "greater than or equal to 0" in r.stderr


def test_local_provider_settings_come_from_the_environment():
    env = {
        "LOCAL_STT_ENGINE": "pocketsphinx",
        "LOCAL_STT_MODEL_PATH": "/models/vosk",
        "LOCAL_STT_THREADS": "3",
        "LOCAL_LLM_MODEL_PATH": "/models/other.gguf",
        "LOCAL_LLM_MAX_TOKENS": "99",
        "LOCAL_LLM_THREADS": "4",
        "LOCAL_LLM_CONTEXT": "4096",
        "LOCAL_LLM_TEMPERATURE": "0.7",
        "LOCAL_TTS_VOICE_PATH": "/voices/amy.onnx",
        "LOCAL_TTS_THREADS": "2",
    }
    c = load_config(None, env=env).providers.local
    assert (c.stt_engine, c.stt_model_path, c.stt_threads) == ("pocketsphinx", "/models/vosk", 3)
    assert (c.llm_model_path, c.llm_max_tokens, c.llm_threads, c.llm_context, c.llm_temperature) == ("/models/other.gguf", 99, 4, 4096, 0.7)
    assert (c.tts_voice_path, c.tts_threads) == ("/voices/amy.onnx", 2)
    with pytest.raises(ConfigError, match=r"providers.local.llm_max_tokens: .*\(from environment variable LOCAL_LLM_MAX_TOKENS\)"):
        load_config(None, env={"LOCAL_LLM_MAX_TOKENS": "0"})


def test_pipelines_name_their_servers_and_servers_come_from_the_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        '[providers]\ndefault = "gpu"\n'
        '[providers.servers.gpu-llm]\napi = "openai"\nurl = "http://10.0.0.9:8000/v1"\napi_key_env = "GPU_KEY"\n'
        '[providers.servers.whisper]\napi = "wyoming"\nurl = "tcp://10.0.0.9:10300"\n'
        '[providers.pipelines.gpu]\nstt = "whisper"\nllm = "gpu-llm"\nfallback = "local"\n'
    )
    cfg = load_config(f, env={"AIAGENT_SERVER_GPU_LLM_URL": "http://10.0.0.7:8000/v1", "AIAGENT_SERVER_GPU_LLM_MODEL": "qwen"})
    assert cfg.providers.servers["gpu-llm"].url == "http://10.0.0.7:8000/v1" and cfg.providers.servers["gpu-llm"].model == "qwen"
    assert cfg.providers.pipeline("gpu").tts == "local" and cfg.providers.fallback_for("gpu") == "local"
    assert "gpu" in cfg.providers.names and cfg.masked()["providers"]["servers"]["gpu-llm"]["api_key_env"] == "GPU_KEY"
    with pytest.raises(ConfigError, match="no \\[providers.servers.\\*\\] named 'nope'"):
        load_config(f, env={"AIAGENT_SERVER_NOPE_URL": "http://x/v1"})
    bad = {
        '[providers.servers.w]\napi = "wyoming"\nurl = "tcp://h:1"\n[providers.pipelines.p]\nllm = "w"\n': "an LLM needs an openai server",
        '[providers.pipelines.p]\nstt = "gpu"\n': "pipelines.p.stt: no server 'gpu'; known: local",
        '[providers.servers.w]\napi = "wyoming"\nurl = "http://h:1"\n': "a wyoming server's url starts with tcp://",
        '[providers.pipelines.local]\n': "'local' is a built-in provider",
        '[profiles.default]\nprovider = "gpu"\n': "profiles.default.provider: unknown provider 'gpu'",
    }
    for text, reason in bad.items():
        f.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config(f, env={})
        assert reason in str(e.value), str(e.value)
