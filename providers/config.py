"""The providers' configuration models: their part of config.toml ([providers] and below).

They live with the providers, so that a provider depends on its own settings and on media/ only;
engine/config.py puts them into the whole application's configuration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from yarl import URL

PROVIDER_NAMES = frozenset({"echo", "tone", "local", "deepgram"})  # built in; pipelines add theirs
IN_PROCESS = "local"  # a pipeline stage on this machine's model workers ([providers.local])


class ConfigSection(BaseModel):
    # Unknown keys are typos in an operator's file: reject them instead of ignoring them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ToneProviderConfig(ConfigSection):
    frequency_hz: float = Field(440.0, gt=20, lt=4000)
    duration_ms: int = Field(2000, ge=20, le=60000)
    think_ms: int = Field(200, ge=0, le=10000)


class LocalProviderConfig(ConfigSection):
    """The local provider: STT -> LLM -> TTS on this machine. Empty model paths mean the models
    shipped in PyPI packages (Whisper tiny.en, Qwen2.5-Coder-0.5B-Instruct or SmolLM2-135M-Instruct,
    Piper en_US-joe-medium). What the agent says and knows is the call's profile's."""

    stt_engine: Literal["whisper", "pocketsphinx", "vosk"] = "whisper"
    stt_model_path: str = ""  # a CTranslate2 Whisper dir, or a Vosk model dir
    # Whisper and the LLM work at the same time under load: each gets half the cores (1 and 1 on
    # two; with 2 each their spinning threads wait on each other: bench/cpu.py 18.7 % a call against 15.6 %).
    stt_threads: int = Field(1, ge=1, le=64)
    stt_compute_type: str = "int8"
    stt_beam_size: int = Field(1, ge=1, le=10)
    # Whisper's encoder window: at least this long, and the utterance plus 1 s. 15 s halves a
    # pass over a question at the same word error rate; at 10 s and less the tiny model loops on
    # short clips (bench/stt_wer.py --windows). 30: Whisper's own.
    stt_window_s: float = Field(15.0, ge=5.0, le=30.0)
    # Transcribe the utterance so far at each pause of the caller (200 ms): at the end of speech
    # the transcript is usually there already.
    stt_at_pause: bool = True
    # And every this often while the caller talks, to show the operator words early. Each is a whole
    # Whisper pass (0.2-0.3 CPU-s with tiny.en for a question): 0, none (the default).
    stt_partial_interval_ms: int = Field(0, ge=0, le=10000)
    # A transcript at the caller's pause that reads as a whole sentence ends the turn after this
    # much quiet instead of the VAD's hangover (vad.end_ms); longer than a comma's pause. 0: off
    # (the default: with end_ms 500 it gains little, and a caller's comma can split a question).
    complete_end_ms: int = Field(0, ge=0, le=5000)
    # Begin the answer (the LLM) at the caller's pause when its transcript reads as a whole
    # sentence, and play it if the turn ends on those words (dropped if the caller goes on).
    answer_at_pause: bool = True
    # A packaged model; the default by bench/answers.py (facts stated 85% against 55%), at the cost
    # of about 170 ms more to the first sentence (docs/benchmarks.md, "What the answers say").
    llm_model: Literal["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-iq4nl"] = "qwen2.5-coder-0.5b-iq4nl"
    llm_model_path: str = ""  # any GGUF file (instead of llm_model)
    llm_chat_format: str = ""  # empty: the chat template stored in the GGUF
    llm_context: int = Field(2048, ge=256, le=131072)
    llm_max_tokens: int = Field(60, ge=1, le=4096)
    llm_temperature: float = Field(0.3, ge=0.0, le=2.0)
    llm_threads: int = Field(1, ge=1, le=64)  # half the cores, as stt_threads
    history_turns: int = Field(6, ge=0, le=100)  # earlier exchanges kept in the prompt, at most (pipeline.history_window)
    tts_voice_path: str = ""  # a Piper .onnx voice (its .onnx.json beside it)
    # Piper's operator threads (onnxruntime's default: one per core). One, as Whisper and the LLM:
    # a sentence takes about 100 ms longer alone but 10-15 % less CPU in a call, which the other
    # callers' models get (docs/benchmarks.md, "Piper alone").
    tts_threads: int = Field(1, ge=1, le=64)
    tts_cache_size: int = Field(128, ge=0, le=100000)  # synthesized sentences kept
    max_queue: int = Field(16, ge=1, le=1000)  # model jobs waiting before new ones are refused
    # Calls on providers that run models here served at once; a new one beyond that takes the
    # over-capacity path (asterisk.over_capacity). 0: measured from the models' own work
    # (engine/capacity.py, docs/scaling.md, "Capacity: what the models serve at once").
    max_active_calls: int = Field(0, ge=0, le=10000)
    # A model worker process with work but no progress this long is hung: killed and restarted.
    worker_hang_timeout_s: float = Field(10.0, gt=0, le=3600)
    # Said when a turn gets no answer: a model worker crashed or hung (it is being restarted), or
    # the models' queue was full (more callers than they serve). Such a turn counts as failed.
    apology: str = "Sorry, I lost my train of thought. Could you say that again?"
    # Said when a caller's answer has not started this long after they stopped speaking (more
    # callers than the models keep up with): a short line instead of silence. 0: never.
    hold_line: str = "One moment, please."
    hold_after_ms: int = Field(2000, ge=0, le=60000)


class DeepgramProviderConfig(ConfigSection):
    """Deepgram's Voice Agent API (STT, LLM and TTS in one websocket per call). The API key comes
    from the environment (DEEPGRAM_API_KEY) only: it is never read from or printed with config."""

    agent_url: str = ""  # DEEPGRAM_AGENT_URL; empty: Deepgram's production endpoint
    listen_model: str = "nova-3"
    think_provider: str = "open_ai"
    think_model: str = "gpt-4o-mini"
    speak_model: str = "aura-2-thalia-en"
    output_encoding: Literal["mulaw", "linear16"] = "mulaw"  # mulaw 8 kHz needs no resampling
    connect_timeout_s: float = Field(3.0, gt=0)  # a first connect this slow: the call falls back
    keepalive_interval_s: float = Field(5.0, gt=0)  # with no audio going out, KeepAlive this often
    # While a first connect fails, new calls go to the fallback (circuit open); a probe connection
    # after this long (doubling while it still fails, up to 2 minutes) finds out when it is back.
    circuit_open_s: float = Field(10.0, gt=0)
    reconnect_attempts: int = Field(3, ge=0, le=100)  # failures in a row before the call falls back
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(5.0, gt=0)
    watchdog_s: float = Field(30.0, gt=0)  # no server message this long while the caller speaks: reset


class ModelServerConfig(ConfigSection):
    """A model server some pipeline stage runs on (``[providers.servers.NAME]``)."""

    # "openai": the OpenAI-compatible HTTP API (llama.cpp's server, vLLM, Ollama, OpenAI) for the
    # LLM, transcriptions and speech; "wyoming": a Wyoming STT or TTS server.
    api: Literal["openai", "wyoming"]
    url: str = Field(pattern=r"^(https?|tcp)://")  # openai: http://HOST:PORT/v1; wyoming: tcp://HOST:PORT
    model: str = ""  # the model to ask for (openai; "" for a server that serves one)
    voice: str = ""  # TTS voice ("" the server's default)
    api_key_env: str = ""  # the environment variable that holds the API key (never this file)
    timeout_s: float = Field(5.0, gt=0, le=300)  # connect, and each wait for the next piece of an answer
    max_concurrency: int = Field(4, ge=1, le=1024)  # jobs this engine runs on it at once
    probe_interval_s: float = Field(5.0, gt=0, le=3600)  # how often it is checked (and found back)
    # openai LLM: offer it the profile's actions (transfer_call, end_call) as tool calls. For a
    # model that calls tools well, on a server that passes them on (llama-server --jinja, vLLM
    # with tool parsing, Ollama, OpenAI); the word rules (providers/intents.py) decide first.
    tools: bool = False

    @field_validator("url")
    @classmethod
    def _url_usable(cls, v: str) -> str:
        # Parsed as aiohttp will (yarl), so that a URL it cannot use fails here, naming the field,
        # not at the first call. The messages never repeat the URL: it may hold a password.
        try:
            u = URL(v)
            u.port  # noqa: B018 - parsing the port is the check
        except ValueError as e:
            raise ValueError(f"not a usable URL ({e}); in a password, write / # ? @ and spaces percent-encoded (%2F %23 %3F %40 %20)") from None
        if not u.host or any(c.isspace() for c in v):
            raise ValueError("not a usable URL (no host, or a space in it): http://HOST:PORT/v1 or tcp://HOST:PORT")
        return v

    @model_validator(mode="after")
    def _scheme_fits(self) -> ModelServerConfig:
        wants = ("tcp://",) if self.api == "wyoming" else ("http://", "https://")
        if not self.url.startswith(wants):
            raise ValueError(f"a {self.api} server's url starts with {' or '.join(wants)}")
        u = URL(self.url)
        if self.api == "wyoming" and not u.explicit_port:
            raise ValueError("a wyoming server's url is tcp://HOST:PORT (the port is needed)")
        if (u.user or u.password) and self.api_key_env:
            raise ValueError("url has credentials and api_key_env is set: the server gets one of them; use one")
        return self


class PipelineConfig(ConfigSection):
    """A provider made of three stages (``[providers.pipelines.NAME]``), each "local" (this
    machine's model workers, as [providers.local] says) or the name of a [providers.servers.NAME].
    Its other settings (history, answer length, the apology) are [providers.local]'s."""

    stt: str = IN_PROCESS
    llm: str = IN_PROCESS
    tts: str = IN_PROCESS
    fallback: str = ""  # provider for new calls while one of its servers is down; "": providers.fallback


class EchoProviderConfig(ConfigSection):
    delay_ms: int = Field(500, ge=0, le=10000)


class ProvidersConfig(ConfigSection):
    # First, so that the checks of the names below know the pipelines.
    servers: dict[str, ModelServerConfig] = {}
    pipelines: dict[str, PipelineConfig] = {}
    default: str = "echo"
    # Used for new calls while the default is not ready (e.g. no DEEPGRAM_API_KEY), and for a
    # call whose provider fails for good. Empty: no fallback, such calls end with a logged error.
    fallback: str = ""
    echo: EchoProviderConfig = EchoProviderConfig()
    deepgram: DeepgramProviderConfig = DeepgramProviderConfig()
    tone: ToneProviderConfig = ToneProviderConfig()
    local: LocalProviderConfig = LocalProviderConfig()

    @property
    def names(self) -> frozenset[str]:
        """Every provider a call may use: the built-in ones and the pipelines."""
        return PROVIDER_NAMES | frozenset(self.pipelines)

    def is_pipeline(self, name: str) -> bool:
        return name == IN_PROCESS or name in self.pipelines

    def pipeline(self, name: str) -> PipelineConfig:
        return self.pipelines.get(name) or PipelineConfig()

    def runs_models_here(self, name: str) -> bool:
        """The provider has a stage in this machine's model workers: its calls count against the
        models' capacity."""
        if not self.is_pipeline(name):
            return False
        p = self.pipeline(name)
        return IN_PROCESS in (p.stt, p.llm, p.tts)

    def fallback_for(self, name: str) -> str:
        """The provider that takes new calls while ``name`` is not ready."""
        p = self.pipelines.get(name)
        return (p.fallback if p is not None else "") or self.fallback

    def check_name(self, what: str, name: str) -> None:
        if name and name not in self.names:
            raise ValueError(f"{what}: unknown provider {name!r}; known: {', '.join(sorted(self.names))}")

    @field_validator("default", "fallback")
    @classmethod
    def _known_provider(cls, v: str, info: ValidationInfo) -> str:
        known = PROVIDER_NAMES | frozenset(info.data.get("pipelines") or ())
        if v and v not in known:
            raise ValueError(f"unknown provider {v!r}; known: {', '.join(sorted(known))}")
        return v

    @model_validator(mode="after")
    def _pipelines_valid(self) -> ProvidersConfig:
        for name, p in self.pipelines.items():
            if name in PROVIDER_NAMES:
                raise ValueError(f"pipelines.{name}: {name!r} is a built-in provider; name the pipeline otherwise")
            self.check_name(f"pipelines.{name}.fallback", p.fallback)
            for stage in ("stt", "llm", "tts"):
                server = getattr(p, stage)
                if server == IN_PROCESS:
                    continue
                if server not in self.servers:
                    known = ", ".join([IN_PROCESS, *sorted(self.servers)])
                    raise ValueError(f"pipelines.{name}.{stage}: no server {server!r}; known: {known}")
                if stage == "llm" and self.servers[server].api != "openai":
                    raise ValueError(f"pipelines.{name}.llm: server {server!r} speaks {self.servers[server].api}; an LLM needs an openai server")
        return self
