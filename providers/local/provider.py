"""The local provider: STT, then the LLM, then Piper TTS, streamed so that the first sentence is
spoken while the rest is still being generated.

Models load once at startup and are shared by all calls; each runs in its own worker thread
(ModelWorker), so RTP pacing and the UI never wait on inference.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

from engine.audio import rms_dbfs, voiced_ms
from engine.config import LocalProviderConfig
from providers.base import (
    AgentAudio,
    AgentSpeakingStarted,
    AgentSpeakingStopped,
    CallContext,
    EmitFn,
    Provider,
    ProviderCall,
    ProviderError,
    Readiness,
    Transcript,
    TurnMark,
    UtteranceCollector,
)
from providers.local.llm import ChatModel
from providers.local.models import JOE_VOICE, SMOLLM2, ModelNotFound, resolve
from providers.local.sentences import SentenceSplitter
from providers.local.stt import SpeechToText, build_stt, check_stt_model
from providers.local.tts import PiperTts
from providers.local.workers import ModelWorker, QueueFull

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SPEECH_MS = 200  # an utterance with less sound than this is not transcribed
SPEECH_DBFS = -45.0
PAUSE_FRAMES = 10  # 200 ms without voice: transcribe now, the utterance may be over


@dataclass
class LocalModels:
    stt: SpeechToText
    llm: ChatModel
    tts: PiperTts
    stt_worker: ModelWorker
    llm_worker: ModelWorker
    tts_worker: ModelWorker

    def close(self) -> None:
        for w in (self.stt_worker, self.llm_worker, self.tts_worker):
            w.shutdown()


def check_model_files(cfg: LocalProviderConfig) -> None:
    """Every model file the config names is there (raises ModelNotFound otherwise). Cheap."""
    check_stt_model(cfg)
    resolve(SMOLLM2, cfg.llm_model_path)
    voice = resolve(JOE_VOICE, cfg.tts_voice_path)
    if not voice.with_name(voice.name + ".json").is_file():
        raise ModelNotFound(f"{JOE_VOICE.setting}: the voice's config {voice.name}.json is missing beside {voice}")


def load_models(cfg: LocalProviderConfig) -> LocalModels:
    check_model_files(cfg)
    stt = build_stt(cfg)
    llm = ChatModel(resolve(SMOLLM2, cfg.llm_model_path), cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
    tts = PiperTts(resolve(JOE_VOICE, cfg.tts_voice_path), cfg.tts_cache_size)
    return LocalModels(
        stt, llm, tts,
        ModelWorker("stt", cfg.max_queue), ModelWorker("llm", cfg.max_queue), ModelWorker("tts", cfg.max_queue),
    )


@dataclass
class _Turn:
    cancelled: threading.Event = field(default_factory=threading.Event)
    spoken: list[str] = field(default_factory=list)


class LocalCall(ProviderCall):
    def __init__(self, ctx: CallContext, emit: EmitFn, models: LocalModels, cfg: LocalProviderConfig) -> None:
        self.ctx = ctx
        self._emit = emit
        self.m = models
        self.cfg = cfg
        self._loop = asyncio.get_running_loop()
        self._collector = UtteranceCollector(ctx.input_sample_rate, ctx.fallback_window_ms, ctx.preroll_ms)
        self._history: list[dict[str, str]] = []
        self._turn_task: asyncio.Task | None = None
        self._turn: _Turn | None = None
        self._partial_task: asyncio.Task | None = None
        self._partial_due = 0.0
        self._voiced = 0  # voiced 20 ms frames in the current utterance
        self._since_voiced = 0  # frames since the last voiced one
        self._partial: tuple[int, str] | None = None  # (voiced frames it covered, its text)
        self._stopped = False

    async def start(self) -> None:
        if self.cfg.greeting:
            self._turn_task = asyncio.create_task(self._speak_only(self.cfg.greeting))

    # ---- caller audio
    def send_audio(self, pcm16: bytes) -> None:
        c = self._collector
        c.add(pcm16)
        if not c.in_speech:
            return
        if rms_dbfs(pcm16) > SPEECH_DBFS:
            self._voiced += 1
            self._since_voiced = 0
        else:
            self._since_voiced += 1
        interval = self.cfg.stt_partial_interval_ms / 1000
        if not interval or (self._partial_task is not None and not self._partial_task.done()):
            return
        # Whisper is not streaming: transcribe the growing utterance every interval (partial text
        # for the operator), and once more as soon as the caller pauses. If no voice comes after
        # that pause, the VAD's end-of-speech finds the transcript already done.
        pausing = self._since_voiced == PAUSE_FRAMES and (self._partial is None or self._partial[0] < self._voiced)
        if pausing or self._loop.time() >= self._partial_due:
            self._partial_due = self._loop.time() + interval
            self._partial_task = asyncio.create_task(self._run_partial(c.snapshot(), self._voiced))

    def utterance_started(self) -> None:
        self._collector.start()
        self._partial_due = self._loop.time() + self.cfg.stt_partial_interval_ms / 1000
        self._voiced = self._since_voiced = 0
        self._partial = None

    def utterance_ended(self, fallback: bool) -> None:
        audio = self._collector.take()
        done = self._partial if self._partial is not None and self._partial[0] == self._voiced else None
        self._partial = None
        self._voiced = self._since_voiced = 0
        if voiced_ms(audio, SAMPLE_RATE, SPEECH_DBFS) < MIN_SPEECH_MS:
            if not fallback:
                self._emit(TurnMark("no_answer", self._loop.time()))
            return
        self._cancel_turn()
        self._turn_task = asyncio.create_task(self._answer(audio, done[1] if done else None))

    async def _run_partial(self, audio: bytes, voiced: int) -> None:
        try:
            text = await self.m.stt_worker.run(self.m.stt.transcribe, audio)
        except QueueFull:
            return
        if self._collector.in_speech:
            self._partial = (voiced, text)
            if text:
                self._emit(Transcript("caller", text, final=False))

    # ---- the answer
    async def _answer(self, audio: bytes, transcribed: str | None) -> None:
        """``transcribed``: the text of a partial that already covered all of the voice."""
        turn = self._turn = _Turn()
        loop = self._loop
        try:
            text = transcribed if transcribed is not None else await self.m.stt_worker.run(self.m.stt.transcribe, audio)
            self._emit(TurnMark("stt_final", loop.time()))
            if not text:
                self._emit(TurnMark("no_answer", loop.time()))
                return
            self._emit(Transcript("caller", text))
            messages = [{"role": "system", "content": self.cfg.system_prompt}, *self._history[-2 * self.cfg.history_turns :], {"role": "user", "content": text}]
            sentences: asyncio.Queue[str | None] = asyncio.Queue()
            speaker = asyncio.create_task(self._speak(sentences, turn))
            splitter = SentenceSplitter()
            first_token = True

            def on_text(piece: str) -> None:  # in the LLM thread
                loop.call_soon_threadsafe(got_text, piece)

            def got_text(piece: str) -> None:
                nonlocal first_token
                if turn.cancelled.is_set():
                    return
                if first_token:
                    first_token = False
                    self._emit(TurnMark("llm_first_token", loop.time()))
                for sentence in splitter.feed(piece):
                    sentences.put_nowait(sentence)

            try:
                reply = await self.m.llm_worker.run(
                    self.m.llm.generate, messages, self.cfg.llm_max_tokens, self.cfg.llm_temperature, on_text, turn.cancelled
                )
                await asyncio.sleep(0)  # let the last got_text callbacks run
                rest = splitter.flush()
                if rest:
                    sentences.put_nowait(rest)
            finally:
                sentences.put_nowait(None)
                await speaker
            self._history += [{"role": "user", "content": text}, {"role": "assistant", "content": " ".join(turn.spoken) or reply}]
        except asyncio.CancelledError:
            turn.cancelled.set()
            raise
        except QueueFull as e:
            self._emit(ProviderError(f"models busy, turn dropped: {e}"))
            self._emit(TurnMark("no_answer", loop.time()))
        except Exception as e:
            log.exception("[%s] local provider turn failed", self.ctx.call_id)
            self._emit(ProviderError(f"turn failed: {e.__class__.__name__}: {e}"))
            self._emit(TurnMark("no_answer", loop.time()))

    async def _speak(self, sentences: asyncio.Queue[str | None], turn: _Turn) -> None:
        """Speaks sentences as they come; TTS of one overlaps generation of the next."""
        started = False
        try:
            while (sentence := await sentences.get()) is not None:
                if turn.cancelled.is_set():
                    continue
                if not started:
                    self._emit(TurnMark("first_sentence", self._loop.time()))
                pcm = await self.m.tts_worker.run(self.m.tts.synthesize, sentence)
                if turn.cancelled.is_set():
                    continue
                if not started:
                    started = True
                    self._emit(TurnMark("tts_first_audio", self._loop.time()))
                    self._emit(AgentSpeakingStarted())
                turn.spoken.append(sentence)
                self._emit(Transcript("agent", sentence))
                self._emit(AgentAudio(pcm, self.m.tts.sample_rate))
        finally:
            if started and not turn.cancelled.is_set():
                self._emit(AgentSpeakingStopped())
            elif not started:
                self._emit(TurnMark("no_answer", self._loop.time()))

    async def _speak_only(self, text: str) -> None:
        pcm = self.m.tts.cached(text) or await self.m.tts_worker.run(self.m.tts.synthesize, text)
        self._emit(AgentSpeakingStarted())
        self._emit(Transcript("agent", text))
        self._emit(AgentAudio(pcm, self.m.tts.sample_rate))
        self._emit(AgentSpeakingStopped())
        self._history.append({"role": "assistant", "content": text})

    # ---- control
    def _cancel_turn(self) -> None:
        if self._turn is not None:
            self._turn.cancelled.set()  # the LLM thread stops at its next token
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()

    async def cancel_response(self) -> None:
        self._cancel_turn()

    async def stop(self) -> None:
        self._stopped = True
        self._cancel_turn()
        tasks = [t for t in (self._turn_task, self._partial_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LocalProvider(Provider):
    name = "local"

    def __init__(self, cfg: LocalProviderConfig) -> None:
        self.cfg = cfg
        self.models: LocalModels | None = None
        self._error: str | None = None

    async def load(self) -> None:
        """Loads every model once (a clear ModelNotFound names the setting and path when one is
        missing), and synthesizes the greeting so the first call hears it at once."""
        try:
            check_model_files(self.cfg)
            self.models = await asyncio.to_thread(load_models, self.cfg)
        except ModelNotFound as e:
            self._error = str(e)
            raise
        if self.cfg.greeting:
            await self.models.tts_worker.run(self.models.tts.synthesize, self.cfg.greeting)

    def readiness(self) -> Readiness:
        if self.models is None:
            return Readiness(False, self._error or "models not loaded")
        return Readiness(True, f"{self.models.stt.name} + {self.models.llm.path.name} + piper {self.models.tts.sample_rate} Hz")

    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall:
        assert self.models is not None, "load() first"
        return LocalCall(ctx, emit, self.models, self.cfg)

    def queue_depths(self) -> dict[str, int]:
        if self.models is None:
            return {}
        m = self.models
        return {"stt": m.stt_worker.depth, "llm": m.llm_worker.depth, "tts": m.tts_worker.depth}

    async def close(self) -> None:
        if self.models is not None:
            self.models.close()
