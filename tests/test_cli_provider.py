"""``--provider NAME``: the provider for new calls from the command line, by the names the docs give
(local, deepgram, echo, tone, a pipeline's), before or after the command's name; an unknown one is
refused with the names that would work."""

from __future__ import annotations

import json

import pytest

from aiagent_tui.cli import _parser, main

PIPELINE = (
    '[providers.servers.gpu-llm]\napi = "openai"\nurl = "http://10.0.0.9:8000/v1"\n'
    '[providers.pipelines.gpu]\nllm = "gpu-llm"\n'
)


@pytest.fixture
def config(tmp_path, monkeypatch):
    # main() sets the variable --provider stands for: the test's own value, put back after it.
    monkeypatch.setenv("AIAGENT_PROVIDER", "")
    f = tmp_path / "c.toml"
    f.write_text('[providers]\ndefault = "echo"\n' + PIPELINE)
    return str(f)


def effective_default(capsys) -> str:
    return json.loads(capsys.readouterr().out)["providers"]["default"]


@pytest.mark.parametrize("argv", [
    ["--provider", "local", "check-config"],
    ["check-config", "--provider", "local"],
    ["--provider", "Local", "check-config"],  # as typed: case does not matter
])
def test_check_config_takes_the_provider_before_or_after_its_name(config, capsys, argv):
    assert main(["--config", config, *argv]) == 0
    assert effective_default(capsys) == "local"


@pytest.mark.parametrize("name", ["local", "deepgram", "echo", "tone", "gpu"])
def test_every_provider_name_of_the_docs_and_a_pipelines_is_accepted(config, capsys, name):
    assert main(["--config", config, "--provider", name, "check-config"]) == 0
    assert effective_default(capsys) == name


def test_an_unknown_provider_is_refused_with_the_valid_names(config, capsys):
    assert main(["--config", config, "--provider", "whisper", "check-config"]) == 2
    err = capsys.readouterr().err
    assert "--provider 'whisper': unknown provider; known: deepgram, echo, gpu, local, tone" in err


@pytest.mark.parametrize("argv", [
    ["--sim", "--provider", "local"],  # the issue's: refused as "invalid choice: 'local'"
    ["--provider", "local", "--no-ui"],
    ["--no-ui", "--sim", "--provider", "tone"],
    ["doctor", "--provider", "local"],
])
def test_the_commands_that_run_or_check_an_engine_parse_it(argv):
    assert _parser().parse_args(argv).provider == argv[argv.index("--provider") + 1]


def test_a_reload_keeps_the_provider_of_the_command_line(config, capsys):
    """--provider stands for AIAGENT_PROVIDER: a reload (R, SIGHUP) reads the environment again,
    and the file's default does not come back."""
    from engine.config import reload_config

    assert main(["--config", config, "--provider", "tone", "check-config"]) == 0
    capsys.readouterr()
    reloaded, overridden = reload_config(config)
    assert reloaded.providers.default == "tone" and overridden == ("providers.default (AIAGENT_PROVIDER)",)


@pytest.mark.parametrize("argv", [["--provider", "local", "attach"], ["--provider", "local", "calls", "list"]])
def test_commands_that_run_no_engine_refuse_it_rather_than_ignore_it(config, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["--config", config, *argv])
    assert e.value.code == 2
    assert "--provider is for a command that runs or checks an engine" in capsys.readouterr().err
