"""The local provider: STT, then the LLM, then Piper TTS, streamed so that the first sentence is
spoken while the rest is still being generated.

Each model loads once in its own supervised worker process (ModelWorker) shared by all calls, so
RTP pacing and the UI never wait on inference, and a crash or hang in native model code costs a
turn (the caller hears a short apology), never the call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from dataclasses import dataclass, field

from media.audio import voiced_ms
from providers.config import LocalProviderConfig
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
    ComponentStatus,
)
from providers.intents import decide, offered_department
from providers.local import grounding
from providers.local.models import JOE_VOICE, ModelNotFound, resolve, resolve_llm
from providers.local.sentences import SentenceSplitter
from providers.local.spoken import spoken
from providers.local.stt import check_stt_model
from providers.local.tts import SpeechCache
from providers.local.workers import ModelWorker, QueueFull, WorkerCrashed

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SPEECH_MS = 200  # an utterance with less sound than this is not transcribed
SPEECH_DBFS = -45.0
PAUSE_S = 0.2  # this long without voice: transcribe now, the utterance may be over


@dataclass
class LocalModels:
    stt: ModelWorker
    llm: ModelWorker
    tts: ModelWorker
    cache: SpeechCache
    sample_rate: int  # of the TTS voice

    @property
    def workers(self) -> tuple[ModelWorker, ModelWorker, ModelWorker]:
        return (self.stt, self.llm, self.tts)

    async def synthesize(self, text: str) -> bytes:
        pcm = self.cache.get(text)
        if pcm is None:
            pcm = await self.tts.run("synthesize", spoken(text))
            self.cache.put(text, pcm)
        return pcm

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers))


def check_model_files(cfg: LocalProviderConfig) -> None:
    """Every model file the config names is there (raises ModelNotFound otherwise). Cheap."""
    check_stt_model(cfg)
    resolve_llm(cfg.llm_model, cfg.llm_model_path)
    voice = resolve(JOE_VOICE, cfg.tts_voice_path)
    if not voice.with_name(voice.name + ".json").is_file():
        raise ModelNotFound(f"{JOE_VOICE.setting}: the voice's config {voice.name}.json is missing beside {voice}")


async def start_models(cfg: LocalProviderConfig, phrases: tuple[str, ...] = (), instructions: tuple[str, ...] = ()) -> LocalModels:
    """One worker process per model, loading side by side; the fixed ``phrases`` (the profiles'
    greetings, closing lines, announcements) and the apology are synthesized now, so they cost
    nothing on a call and play even while a worker restarts; the profiles' ``instructions`` are
    read by the LLM now, so that a call's first turn starts from them (the prefix cache)."""
    check_model_files(cfg)
    data = cfg.model_dump(mode="json")
    workers = [ModelWorker(kind, data, cfg.max_queue, cfg.worker_hang_timeout_s) for kind in ("stt", "llm", "tts")]
    results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await asyncio.gather(*(w.close() for w in workers))
        raise failed[0]
    stt, llm, tts = workers
    m = LocalModels(stt, llm, tts, SpeechCache(cfg.tts_cache_size), int(tts.detail))
    for system in dict.fromkeys(instructions):
        await llm.run("generate", [{"role": "system", "content": system}], 1, 0.0)
    for text in dict.fromkeys((*phrases, cfg.apology)):
        if text:
            m.cache.put(text, await tts.run("synthesize", text), pin=True)
    return m


@dataclass
class _Turn:
    user: str = ""  # what the caller said ("" for a line of the agent's own)
    cancelled: bool = False
    spoken: list[tuple[str, float]] = field(default_factory=list)  # (sentence, seconds of its audio)
    recorded: bool = False  # in the history already

    def heard(self, played_s: float | None) -> str:
        """What the caller heard of the answer: whole sentences, and the words of the one cut off
        in proportion to how much of it played."""
        if played_s is None:
            return " ".join(t for t, _ in self.spoken)
        out, left = [], played_s
        for text, seconds in self.spoken:
            if left >= seconds:
                out.append(text)
            else:
                words = text.split()
                cut = int(len(words) * max(0.0, left) / seconds) if seconds > 0 else 0
                if cut:
                    out.append(" ".join(words[:cut]) + "...")
                break
            left -= seconds
        return " ".join(out)


class LocalCall(ProviderCall):
    def __init__(self, ctx: CallContext, emit: EmitFn, models: LocalModels, cfg: LocalProviderConfig) -> None:
        self.ctx = ctx
        self._emit = emit
        self.m = models
        self.cfg = cfg
        self._loop = asyncio.get_running_loop()
        self._collector = UtteranceCollector(ctx.input_sample_rate, ctx.fallback_window_ms, ctx.preroll_ms)
        self.profile = ctx.profile
        self._vocabulary = ctx.profile.stt_prompt()
        self._history: list[dict[str, str]] = []
        self._offered: str | None = None  # the department the last answer offered to put the caller through to
        self._turn_task: asyncio.Task | None = None
        self._turn: _Turn | None = None
        self._partial_task: asyncio.Task[str | None] | None = None
        self._partial_voiced = 0  # voiced frames the last partial started covered
        self._utterance = 0  # counts utterances: a partial belongs to the one it started in
        self._partial_due = 0.0
        self._voiced = 0  # voiced 20 ms frames in the current utterance
        self._last_voiced_at = 0.0
        self._pause_timer: asyncio.TimerHandle | None = None
        self._partial: tuple[int, str] | None = None  # (voiced frames it covered, its text)
        self._stopped = False

    async def start(self) -> None:
        if self.profile.greeting:
            self._turn_task = asyncio.create_task(self._say(self.profile.greeting))

    # ---- caller audio
    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        c = self._collector
        c.add(pcm16)
        if not c.in_speech:
            return
        if level_dbfs > SPEECH_DBFS:
            self._voiced += 1
            self._last_voiced_at = self._loop.time()
            if self._pause_timer is None:
                self._pause_timer = self._loop.call_later(PAUSE_S, self._check_pause)
        self._consider_partial()

    def _check_pause(self) -> None:
        """A pause is time without voice, whether frames come or not (a phone with DTX sends
        nothing while its user is silent)."""
        self._pause_timer = None
        quiet = self._loop.time() - self._last_voiced_at
        if quiet < PAUSE_S:
            self._pause_timer = self._loop.call_later(PAUSE_S - quiet, self._check_pause)
        else:
            self._consider_partial()

    def _consider_partial(self) -> None:
        # Whisper is not streaming: transcribe the growing utterance every interval (partial text
        # for the operator), and once more as soon as the caller pauses (or once the partial in
        # flight at the pause is done). If no voice comes after that pause, the VAD's end of speech
        # finds the transcript done or under way, and waits for it instead of starting again.
        interval = self.cfg.stt_partial_interval_ms / 1000
        c = self._collector
        if self._stopped or not interval or not c.in_speech or (self._partial_task is not None and not self._partial_task.done()):
            return
        now = self._loop.time()
        pausing = now - self._last_voiced_at >= PAUSE_S and self._partial_voiced < self._voiced
        if pausing or now >= self._partial_due:
            self._partial_due = now + interval
            self._partial_voiced = self._voiced
            self._partial_task = asyncio.create_task(self._run_partial(c.snapshot(), self._voiced, self._utterance))
            self._partial_task.add_done_callback(lambda _: self._consider_partial())

    def utterance_started(self) -> None:
        self._collector.start()
        self._partial_due = self._loop.time() + self.cfg.stt_partial_interval_ms / 1000
        self._voiced = self._partial_voiced = 0
        self._partial = None
        self._utterance += 1

    def utterance_ended(self, fallback: bool) -> None:
        audio = self._collector.take()
        # The text of the whole utterance, if a partial has it or is working on it.
        covered: str | asyncio.Task[str | None] | None = None
        if self._partial is not None and self._partial[0] == self._voiced:
            covered = self._partial[1]
        elif self._partial_task is not None and not self._partial_task.done() and self._partial_voiced == self._voiced:
            covered = self._partial_task
        self._partial = None
        self._voiced = self._partial_voiced = 0
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        if fallback:
            # Audio the VAD never found voiced (line noise, the agent's residual echo, which
            # Whisper transcribes even 35 dB down): it is not the caller's turn.
            return
        if voiced_ms(audio, SAMPLE_RATE, SPEECH_DBFS) < MIN_SPEECH_MS:
            self._emit(TurnMark("no_answer", self._loop.time()))
            return
        self._cancel_turn()
        self._turn_task = asyncio.create_task(self._answer(audio, covered))

    async def _run_partial(self, audio: bytes, voiced: int, utterance: int) -> str | None:
        try:
            text: str = await self.m.stt.run("transcribe", audio, self._vocabulary)
        except (QueueFull, WorkerCrashed):
            return None  # a partial is an optimisation: the final transcription tries again
        if self._collector.in_speech and utterance == self._utterance:
            self._partial = (voiced, text)
            if text:
                self._emit(Transcript("caller", text, final=False))
        return text

    async def _transcript(self, audio: bytes, covered: str | asyncio.Task[str | None] | None) -> str:
        if isinstance(covered, str):
            return covered
        if covered is not None:
            text = await asyncio.shield(covered)
            if text is not None:
                return text
        text = await self.m.stt.run("transcribe", audio, self._vocabulary)
        return str(text)

    # ---- the answer
    async def _answer(self, audio: bytes, covered: str | asyncio.Task[str | None] | None) -> None:
        """``covered``: the text of the whole utterance from a partial, or the partial that is
        transcribing all of it."""
        turn = self._turn = _Turn()
        loop = self._loop
        try:
            text = await self._transcript(audio, covered)
            self._emit(TurnMark("stt_final", loop.time()))
            if not text:
                self._emit(TurnMark("no_answer", loop.time()))
                return
            self._emit(Transcript("caller", text))
            turn.user = text
            action = decide(text, self.profile, self._offered)
            self._offered = None
            if action is not None:
                # The engine has the announcement or the closing line said, then acts.
                self._history.append({"role": "user", "content": text})
                turn.recorded = True
                self._emit(action)
                return
            messages = [{"role": "system", "content": self.profile.instructions()}, *self._history[-2 * self.cfg.history_turns :], {"role": "user", "content": text}]
            sentences: asyncio.Queue[str | None] = asyncio.Queue()
            speaker = asyncio.create_task(self._speak(sentences, turn))
            splitter = SentenceSplitter()
            first_token = True
            checked = replaced = False
            generating: asyncio.Task[Any] | None = None

            def deliver(sentence: str) -> None:
                nonlocal checked, replaced
                if replaced:
                    return
                if not checked:
                    # An answer that only echoes the question is not spoken (providers/local/grounding.py).
                    checked = True
                    instead = grounding.check(sentence, text, self.profile.facts, self.profile.unknown_answer)
                    if instead is not None:
                        replaced = True
                        sentences.put_nowait(instead)
                        if generating is not None:
                            generating.cancel()  # the rest of that answer is not wanted
                        return
                sentences.put_nowait(sentence)

            def got_text(piece: str) -> None:
                nonlocal first_token
                if turn.cancelled:
                    return
                if first_token:
                    first_token = False
                    self._emit(TurnMark("llm_first_token", loop.time()))
                for sentence in splitter.feed(piece):
                    deliver(sentence)

            try:
                generating = asyncio.create_task(
                    self.m.llm.run("generate", messages, self.cfg.llm_max_tokens, self.cfg.llm_temperature, on_chunk=got_text)
                )
                try:
                    reply = await generating
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if not replaced or (current is not None and current.cancelling()):
                        raise
                    reply = ""
                rest = splitter.flush()
                if rest:
                    deliver(rest)
            finally:
                sentences.put_nowait(None)
                if turn.cancelled:
                    speaker.cancel()
                await asyncio.gather(speaker, return_exceptions=turn.cancelled)
            if not turn.cancelled:
                said = turn.heard(None) or reply
                self._history += [{"role": "user", "content": text}, {"role": "assistant", "content": said}]
                turn.recorded = True
                self._offered = offered_department(said, self.profile)
        except asyncio.CancelledError:
            turn.cancelled = True
            raise
        except QueueFull as e:
            self._emit(ProviderError(f"models busy, turn dropped: {e}"))
            self._emit(TurnMark("no_answer", loop.time()))
        except WorkerCrashed as e:
            # The model process died or hung mid-turn (it is being restarted): say so briefly
            # rather than leave the caller in silence.
            self._emit(ProviderError(f"turn lost: {e}"))
            await self._say(self.cfg.apology)
        except Exception as e:
            log.exception("[%s] local provider turn failed", self.ctx.call_id)
            self._emit(ProviderError(f"turn failed: {e.__class__.__name__}: {e}"))
            self._emit(TurnMark("no_answer", loop.time()))

    async def _speak(self, sentences: asyncio.Queue[str | None], turn: _Turn) -> None:
        """Speaks sentences as they come; TTS of one overlaps generation of the next."""
        started = False
        try:
            while (sentence := await sentences.get()) is not None:
                if turn.cancelled:
                    continue
                if not started:
                    self._emit(TurnMark("first_sentence", self._loop.time()))
                pcm = await self.m.synthesize(sentence)
                if turn.cancelled:
                    continue
                if not started:
                    started = True
                    self._emit(TurnMark("tts_first_audio", self._loop.time()))
                    self._emit(AgentSpeakingStarted())
                turn.spoken.append((sentence, len(pcm) / 2 / self.m.sample_rate))
                self._emit(Transcript("agent", sentence))
                self._emit(AgentAudio(pcm, self.m.sample_rate))
        finally:
            if started and not turn.cancelled:
                self._emit(AgentSpeakingStopped())
            elif not started:
                self._emit(TurnMark("no_answer", self._loop.time()))

    async def _say(self, text: str) -> bool:
        """One whole utterance of the agent's (the greeting, the apology, a line the engine asks
        for); False if it could not be spoken."""
        if not text:
            self._emit(TurnMark("no_answer", self._loop.time()))
            return False
        try:
            pcm = await self.m.synthesize(text)
        except (QueueFull, WorkerCrashed) as e:
            self._emit(ProviderError(f"could not speak: {e}"))
            self._emit(TurnMark("no_answer", self._loop.time()))
            return False
        self._turn = _Turn(spoken=[(text, len(pcm) / 2 / self.m.sample_rate)], recorded=True)
        self._emit(AgentSpeakingStarted())
        self._emit(Transcript("agent", text))
        self._emit(AgentAudio(pcm, self.m.sample_rate))
        self._emit(AgentSpeakingStopped())
        self._history.append({"role": "assistant", "content": text})
        return True

    async def say(self, text: str) -> bool:
        return await self._say(text)

    # ---- control
    def _cancel_turn(self, played_s: float | None = None) -> None:
        """Stops the turn; the history keeps what the caller heard of its answer (``played_s``:
        how much played; None: all that was spoken), not the whole planned answer."""
        turn = self._turn
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()
        if turn is None or turn.cancelled:
            return
        turn.cancelled = True
        heard = turn.heard(played_s)
        if turn.recorded:
            if self._history and self._history[-1]["role"] == "assistant":
                self._history.pop()
        elif turn.user:
            self._history.append({"role": "user", "content": turn.user})
        if heard:
            self._history.append({"role": "assistant", "content": heard})
        turn.recorded = True
        self._offered = offered_department(heard, self.profile)

    async def cancel_response(self, played_s: float | None = None) -> None:
        self._cancel_turn(played_s)

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as the LLM sees it (earlier turns)."""
        return list(self._history)

    async def stop(self) -> None:
        self._stopped = True
        self._cancel_turn()
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        tasks = [t for t in (self._turn_task, self._partial_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LocalProvider(Provider):
    name = "local"
    speaks_text = True

    def __init__(self, cfg: LocalProviderConfig, phrases: tuple[str, ...] = (), instructions: tuple[str, ...] = ()) -> None:
        self.cfg = cfg
        self.phrases = phrases
        self.instructions = instructions
        self.models: LocalModels | None = None
        self._error: str | None = None

    async def load(self) -> None:
        """Starts a worker process per model (a clear ModelNotFound names the setting and path
        when one is missing)."""
        try:
            self.models = await start_models(self.cfg, self.phrases, self.instructions)
        except Exception as e:
            self._error = str(e)
            raise

    def readiness(self) -> Readiness:
        m = self.models
        if m is None:
            return Readiness(False, self._error or "models not loaded")
        failed = [w for w in m.workers if w.state in ("failed", "stopped")]
        if failed:
            return Readiness(False, "; ".join(f"{w.name} worker {w.state}: {w.last_error}" for w in failed))
        return Readiness(True, f"{m.stt.detail} + {m.llm.detail} + piper {m.sample_rate} Hz")

    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall:
        assert self.models is not None, "load() first"
        return LocalCall(ctx, emit, self.models, self.cfg)

    def workers(self) -> list[ComponentStatus]:
        return [w.status() for w in self.models.workers] if self.models is not None else []

    async def close(self) -> None:
        if self.models is not None:
            await self.models.close()
