"""The pipeline provider: speech to text, then the LLM, then text to speech, streamed so that the
first sentence is spoken while the rest is still being generated.

Each stage is in this machine's model worker processes (providers/local: a crash or hang in native
model code costs a turn, never the call) or on a model server (providers/remote). The built-in
"local" pipeline has all three in process; ``[providers.pipelines.NAME]`` mixes them. A stage that
loses a job gets the caller a short apology instead of silence; a pipeline whose server is down
takes no new calls (they go to its fallback), and its calls in progress move there too.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
from collections import OrderedDict
from typing import Any, Awaitable, Coroutine, Sequence, TypeVar
from dataclasses import dataclass

from media.audio import voiced_ms
from providers.config import IN_PROCESS, LocalProviderConfig, PipelineConfig, ProvidersConfig
from providers.base import (
    ActionRequest,
    CallContext,
    CallerFinished,
    EarlyAnswer,
    EmitFn,
    ModelWork,
    Provider,
    ProviderCall,
    ProviderError,
    Readiness,
    Transcript,
    TurnFailed,
    UtteranceCollector,
    ComponentStatus,
    QueueState,
    model_work,
)
from providers.facts.verify import FactGuard
from providers.intents import decide, offered_department
from providers.local.models import JOE_VOICE, ModelNotFound, resolve, resolve_llm
from providers.local.spoken import spoken
from providers.local.worker_stages import WorkerLlm, WorkerStt, WorkerTts
from providers.local.stt import check_stt_model
from providers.local.workers import ModelWorker, WaitObserver
from providers.remote.openai import OpenAiLlm, OpenAiServer, OpenAiStt, OpenAiTts
from providers.remote.server import ModelServer
from providers.remote.wyoming import WyomingServer, WyomingStt, WyomingTts
from providers.stages import LanguageModel, Priority, Reply, Speech, SpeechToText, Stage, StageBusy, StageFailed, TextToSpeech
from providers.profile import AgentProfile
from providers.tools import action_for, action_functions
from providers.answer import CALLER_HOLDS_S, AnswerBegun, CallerQuiet, Heard, SentenceFeed, Speaker, Turn
from providers.turns import SPEECH_DBFS, CallerTurn, Covered
from runtime.tasks import OwnedTasks

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLE_RATE = 16000
MIN_SPEECH_MS = 200  # an utterance with less sound than this is not transcribed


def history_window(history: list[dict[str, str]], turns: int) -> list[dict[str, str]]:
    """The earlier messages a prompt carries: at most the last ``turns`` exchanges, its start moving
    on half of them at a time rather than at every turn. A prompt that begins as the last one did
    costs the LLM only its new tokens (its prefix cache; a model server's prompt cache); one whose
    oldest exchange has just slid out costs the whole conversation again (about 0.9 s to the first
    token instead of 0.2 s with Qwen2.5-0.5B on 2 cores), unless the model cuts it out of the call's
    state, as the in-process one does (providers/local/llm.py)."""
    limit = 2 * turns
    if len(history) <= limit:
        return history
    step = 2 * max(1, turns // 2)
    start = -(-(len(history) - limit) // step) * step  # the first multiple of step that fits
    return history[start:]


class Dialogue:
    """The conversation as the LLM sees it: the earlier exchanges (of each answer, what the caller
    heard, not the whole planned one), and the department the last answer offered to put the
    caller through to."""

    def __init__(self, profile: AgentProfile, turns: int) -> None:
        self._profile = profile
        self._turns = turns  # earlier exchanges a prompt carries, at most
        self.history: list[dict[str, str]] = []
        self.offered: str | None = None
        self.instructions: list[str] = []  # an operator's, for the rest of this call

    def system(self) -> str:
        """The profile's instructions, and the operator's for this call after them (one change of
        the prompt's start: the LLM reads the conversation again once, at the next answer)."""
        base = self._profile.instructions()
        if not self.instructions:
            return base
        added = "\n".join(f"- {text}" for text in self.instructions)
        return f"{base}\n\nThe operator's instructions for this call (they come first where they differ from the above):\n{added}"

    def messages(self, text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system()}, *history_window(self.history, self._turns), {"role": "user", "content": text}]

    def note(self, text: str) -> None:
        """What happened while the agent was not on the line (an operator had the call): a message
        of its own before the caller's next words."""
        self.history.append({"role": "user", "content": text})

    def asked(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})

    def said(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})

    def answered(self, turn: Turn, said: str) -> None:
        self.asked(turn.user)
        if said:
            self.said(said)
        turn.recorded = True

    def cut(self, turn: Turn, played_s: float | None) -> None:
        """The turn was stopped: the history keeps what the caller heard of its answer
        (``played_s``: how much played; None: all that was spoken)."""
        heard = turn.heard(played_s)
        if turn.recorded:
            if self.history and self.history[-1]["role"] == "assistant":
                self.history.pop()
        elif turn.user:
            self.asked(turn.user)
        if heard:
            self.said(heard)
        turn.recorded = True
        self.offered = offered_department(heard, self._profile)


def check_model_files(cfg: LocalProviderConfig) -> None:
    """Every model file the config names is there (raises ModelNotFound otherwise). Cheap."""
    check_stt_model(cfg)
    resolve_llm(cfg.llm_model, cfg.llm_model_path)
    voice = resolve(JOE_VOICE, cfg.tts_voice_path)
    if not voice.with_name(voice.name + ".json").is_file():
        raise ModelNotFound(f"{JOE_VOICE.setting}: the voice's config {voice.name}.json is missing beside {voice}")


class SpeechCache:
    """Synthesized sentences by normalised text, least recently used dropped first, plus pinned
    ones (the greeting, the apology). It lives in the engine, so those play even while the TTS
    worker restarts or its server is down."""

    def __init__(self, size: int) -> None:
        self._cache: OrderedDict[str, Speech] = OrderedDict()
        self._pinned: dict[str, Speech] = {}
        self._size = size
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str) -> str:
        return " ".join(text.split()).lower()

    def get(self, text: str) -> Speech | None:
        key = self._key(text)
        speech = self._pinned.get(key) or self._cache.get(key)
        if speech is None:
            self.misses += 1
            return None
        if key in self._cache:
            self._cache.move_to_end(key)
        self.hits += 1
        return speech

    def put(self, text: str, speech: Speech, pin: bool = False) -> None:
        if pin:
            self._pinned[self._key(text)] = speech
        elif self._size:
            self._cache[self._key(text)] = speech
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)


class _Voice:
    """A TTS stage with the cache of what it said (shared by every pipeline that speaks with it)."""

    def __init__(self, tts: TextToSpeech, cache_size: int) -> None:
        self.tts = tts
        self.cache = SpeechCache(cache_size)

    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        speech = self.cache.get(text)
        if speech is None:
            speech = await self.tts.synthesize(spoken(text), priority)
            self.cache.put(text, speech)
        return speech


class StagePool:
    """Every stage the engine's pipelines use, each built and started once: two pipelines with
    local Whisper share one Whisper worker, and stages on one server share its connection pool."""

    def __init__(self, config: ProvidersConfig, on_wait: WaitObserver | None = None) -> None:
        self.config = config
        self.on_wait = on_wait  # each in-process job's wait for its worker (the engine's histogram)
        self._stages: dict[tuple[str, str], Stage] = {}
        self._servers: dict[str, ModelServer] = {}
        self._voices: dict[str, _Voice] = {}
        self._lock = asyncio.Lock()

    def server(self, name: str) -> ModelServer:
        """The one client of the named server (its connection pool, its circuit)."""
        if name not in self._servers:
            cfg = self.config.servers[name]
            self._servers[name] = OpenAiServer(name, cfg) if cfg.api == "openai" else WyomingServer(name, cfg)
        return self._servers[name]

    def _build(self, kind: str, backend: str) -> Stage:
        local = self.config.local
        if backend == IN_PROCESS:
            worker = ModelWorker(kind, local.model_dump(mode="json"), local.max_queue, local.worker_hang_timeout_s, on_wait=self.on_wait)
            in_process: dict[str, type[WorkerStt | WorkerLlm | WorkerTts]] = {"stt": WorkerStt, "llm": WorkerLlm, "tts": WorkerTts}
            return in_process[kind](worker)
        server = self.server(backend)
        if isinstance(server, OpenAiServer):
            http: dict[str, type[OpenAiStt | OpenAiLlm | OpenAiTts]] = {"stt": OpenAiStt, "llm": OpenAiLlm, "tts": OpenAiTts}
            return http[kind](server)
        assert isinstance(server, WyomingServer) and kind != "llm"  # config validation: an LLM is on an openai server
        return WyomingStt(server) if kind == "stt" else WyomingTts(server)

    async def stages(self, p: PipelineConfig) -> tuple[SpeechToText, LanguageModel, _Voice]:
        """The pipeline's three stages, started (side by side: the models load in parallel)."""
        async with self._lock:
            if IN_PROCESS in (p.stt, p.llm, p.tts):
                check_model_files(self.config.local)
            wanted = [("stt", p.stt), ("llm", p.llm), ("tts", p.tts)]
            new = {key: self._build(*key) for key in wanted if key not in self._stages}
            results = await asyncio.gather(*(s.start() for s in new.values()), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                await asyncio.gather(*(s.close() for s in new.values()))
                raise failed[0]
            self._stages.update(new)
            stt, llm, tts = (self._stages[key] for key in wanted)
            assert isinstance(stt, SpeechToText) and isinstance(llm, LanguageModel) and isinstance(tts, TextToSpeech)
            if p.tts not in self._voices:
                self._voices[p.tts] = _Voice(tts, self.config.local.tts_cache_size)
            return stt, llm, self._voices[p.tts]

    def _named(self) -> dict[str, Stage]:
        """Each stage once, by its name in /health: local-KIND-worker, or server-NAME (a server's
        stages share its client)."""
        return {(f"local-{kind}-worker" if backend == IN_PROCESS else stage.status().name): stage for (kind, backend), stage in self._stages.items()}

    def statuses(self) -> list[ComponentStatus]:
        return [dataclasses.replace(stage.status(), name=name) for name, stage in self._named().items()]

    def queues(self) -> dict[str, QueueState]:
        return {name: stage.queue() for name, stage in self._named().items()}

    def model_busy_s(self) -> dict[str, float]:
        """Each in-process model's time on jobs so far (loop seconds), by kind: what the engine
        measures its capacity from. Empty when no model runs here (model servers have their own
        limits, max_concurrency)."""
        now = asyncio.get_running_loop().time()
        return {
            kind: stage.worker.busy_seconds(now)
            for (kind, backend), stage in self._stages.items()
            if backend == IN_PROCESS and isinstance(stage, (WorkerStt, WorkerLlm, WorkerTts))
        }

    async def close(self) -> None:
        stages, self._stages = self._stages, {}
        servers, self._servers = self._servers, {}
        await asyncio.gather(*(s.close() for s in stages.values()), return_exceptions=True)
        await asyncio.gather(*(s.close() for s in servers.values()), return_exceptions=True)
        self._voices.clear()


@dataclass
class Pipeline:
    """One pipeline's stages."""

    stt: SpeechToText
    llm: LanguageModel
    voice: _Voice

    @property
    def stages(self) -> tuple[Stage, Stage, Stage]:
        return (self.stt, self.llm, self.voice.tts)

    @property
    def cache(self) -> SpeechCache:
        return self.voice.cache

    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        return await self.voice.synthesize(text, priority)


class PipelineCall(ProviderCall):
    """One call through a pipeline: the caller's utterances to the STT (when, CallerTurn decides),
    their words to the LLM, its sentences to the TTS and out as they come."""

    def __init__(self, ctx: CallContext, emit: EmitFn, pipeline: Pipeline, cfg: LocalProviderConfig, fallback: str = "") -> None:
        self.ctx = ctx
        self._clock = ctx.clock
        self._emit = emit
        self.m = pipeline
        self.cfg = cfg
        self._fallback = fallback  # the provider this call moves to if a stage's server goes down
        self._collector = UtteranceCollector(ctx.input_sample_rate, ctx.fallback_window_ms, ctx.preroll_ms)
        self.profile = ctx.profile
        self._vocabulary = ctx.profile.stt_prompt()
        self._dialogue = Dialogue(ctx.profile, cfg.history_turns)
        self._facts = FactGuard(ctx.profile.known, facts_text=ctx.profile.facts, unknown=ctx.profile.unknown_answer)
        self._turn_task: asyncio.Task[Any] | None = None  # the greeting, or the answer to the last utterance
        self._turn: Turn | None = None
        self._early: AnswerBegun | None = None
        self._held = False  # an operator has the call: the caller is transcribed, not answered
        self._caller_quiet = CallerQuiet()  # not the collector's in_speech: an answer waits on it
        self._speaker = Speaker(emit=emit, synthesize=pipeline.synthesize, clock=ctx.clock, caller_quiet=self._caller_quiet)
        self.work = ModelWork()
        self._context = contextvars.copy_context()  # the call's tasks' context: their model jobs count as its
        self._context.run(model_work.set, self.work)
        self._tasks = OwnedTasks(f"[{ctx.call_id}] pipeline")
        self._caller = CallerTurn(
            clock=ctx.clock, spawn=self._spawn, transcribe=self._transcribe_so_far, listener=self, at_pause=cfg.stt_at_pause,
            interval_s=cfg.stt_partial_interval_ms / 1000, complete_end_s=cfg.complete_end_ms / 1000, answer_at_pause=cfg.answer_at_pause,
        )

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        # In the call's context: the call id in its log lines, its model jobs counted as its own.
        task: asyncio.Task[T] = self._context.run(self._tasks.spawn, coro)
        return task

    async def start(self) -> None:
        if self.profile.greeting:
            self._turn_task = self._spawn(self._say(self.profile.greeting))

    # ---- caller audio: the engine's frames and marks; CallerTurn decides about pauses
    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        self._collector.add(pcm16)
        self._caller.frame(level_dbfs)

    def utterance_started(self) -> None:
        self._collector.start()
        self._caller_quiet.clear()
        self._caller.started()
        self._drop_early()

    def utterance_ended(self, fallback: bool) -> None:
        audio = self._collector.take()
        self._caller_quiet.set()
        covered = self._caller.ended()
        earlier = self._unheard()
        early, self._early = self._early, None
        if early is not None and (fallback or earlier is not None or early.text != covered):
            self._discard(early)
            early = None
        if fallback:
            # Audio the VAD never found voiced (line noise, the agent's residual echo, which
            # Whisper transcribes even 35 dB down): it is not the caller's turn.
            return
        if voiced_ms(audio, SAMPLE_RATE, SPEECH_DBFS) < MIN_SPEECH_MS:
            self._speaker.mark("no_answer")
            return
        self._cancel_turn()
        hearing = self._spawn(self._hear(audio, covered, earlier))
        self._turn_task = self._spawn(self._answer(hearing, early))

    # ---- TurnListener: what CallerTurn decided
    def heard_so_far(self, text: str) -> None:
        self._emit(Transcript("caller", text, final=False))

    def caller_goes_on(self) -> None:
        self._drop_early()

    def answer_early(self, text: str) -> None:
        """The caller paused after a whole sentence: most often their turn is over, and the VAD
        says so only ``vad.end_ms`` after their last word. Begin the answer now (an action the
        words ask for is decided at the turn's end, as always)."""
        self._drop_early()
        if (self._held or decide(text, self.profile, self._dialogue.offered) is not None or not self.profile.llm_answers
                or self._facts.answer(text, self._clock.wall(), remember=False)):
            return  # an action, or an answer from the data: no LLM
        tools = action_functions(self.profile) if self.m.llm.calls_tools else []
        messages = self._dialogue.messages(text)
        self._early = AnswerBegun(
            text, messages, lambda on_text: self.m.llm.generate(messages, self.cfg.llm_max_tokens, self.cfg.llm_temperature, on_text, tools),
            self._spawn,
        )

    def caller_finished(self) -> None:
        self._emit(CallerFinished())

    # ---- the caller's words
    def _transcribe_so_far(self, priority: Priority) -> Awaitable[str | None]:
        return self._partial_text(self._collector.snapshot(), priority)

    async def _partial_text(self, audio: bytes, priority: Priority) -> str | None:
        try:
            return await self.m.stt.transcribe(audio, self._vocabulary, priority)
        except (StageBusy, StageFailed):
            return None  # a partial is an optimisation (refused under load): the final transcription tries again

    def _unheard(self) -> asyncio.Task[Heard] | None:
        """The last turn's transcription if it has not reached its answer yet: the caller spoke
        again before it came (a loaded machine), and the next turn answers both utterances."""
        turn = self._turn
        if turn is None or turn.user or turn.hearing is None:
            return None
        return turn.hearing

    async def _hear(self, audio: bytes, covered: Covered, earlier: asyncio.Task[Heard] | None) -> Heard:
        try:
            text = await self._transcript(audio, covered)
        except (StageBusy, StageFailed) as e:
            return e  # the turn that answers says so
        if earlier is None:
            return text
        before = await earlier
        return f"{before if isinstance(before, str) else ''} {text}".strip()  # one refused or lost was said by its own turn

    async def _transcript(self, audio: bytes, covered: Covered) -> str:
        if isinstance(covered, str):
            return covered
        if covered is not None:
            text = await asyncio.shield(covered)
            if text is not None:
                return text
        return await self.m.stt.transcribe(audio, self._vocabulary)

    def _drop_early(self) -> None:
        if self._early is not None:
            self._discard(self._early)
            self._early = None

    def _discard(self, early: AnswerBegun) -> None:
        early.drop()
        self._emit(EarlyAnswer(used=False))

    # ---- the answer
    async def _answer(self, hearing: asyncio.Task[Heard], early: AnswerBegun | None = None) -> None:
        """``hearing``: the transcription of what the caller said (it outlives the turn if the
        caller speaks again before it comes: the next turn takes it over); ``early``: the answer
        to those words, begun at the caller's pause."""
        turn = self._turn = Turn(hearing=hearing)
        started_at = self._clock.now()
        try:
            heard = await asyncio.shield(hearing)
            if not isinstance(heard, str):
                raise heard
            self._speaker.mark("stt_final")
            if not heard:
                self._speaker.mark("no_answer")
                return
            self._emit(Transcript("caller", heard))
            turn.user = heard
            if self._held:
                # The caller talks to the operator: their words reach the history with the
                # hand-back's note (hold_answers), and the agent says nothing.
                turn.recorded = True
                self._speaker.mark("no_answer")
                return
            if self.cfg.hold_after_ms and self.cfg.hold_line:
                turn.hold = self._speaker.hold_line(turn, started_at + self.cfg.hold_after_ms / 1000, self.cfg.hold_line, self.m.cache)
            action = decide(heard, self.profile, self._dialogue.offered)
            self._dialogue.offered = None
            messages = self._dialogue.messages(heard)
            if early is not None and (action is not None or early.messages != messages):
                self._discard(early)
                early = None
            if action is not None:
                # The engine has the announcement or the closing line said, then acts.
                self._dialogue.asked(heard)
                turn.recorded = True
                self._emit(action)
                return
            from_data = self._facts.answer(heard, self._clock.wall())
            if from_data is not None or not self.profile.llm_answers:
                if early is not None:
                    self._discard(early)
                    early = None
                reply = await self._speak_fact(turn, from_data.text if from_data is not None else self.profile.unknown_answer)
            else:
                reply = await self._generate_and_speak(turn, heard, messages, early)
            if not turn.cancelled:
                await self._answered(turn, reply)
        except asyncio.CancelledError:
            turn.cancelled = True
            raise
        except (StageBusy, StageFailed) as e:
            await self._turn_lost(turn, e)
        except Exception as e:
            log.exception("[%s] local provider turn failed", self.ctx.call_id)
            self._emit(ProviderError(f"turn failed: {e.__class__.__name__}: {e}"))
            self._speaker.mark("no_answer")
        finally:
            if turn.hold is not None:
                turn.hold.cancel()
            if early is not None:
                early.drop()  # done already, unless the turn ended before it took it over

    async def _generate_and_speak(self, turn: Turn, text: str, messages: list[dict[str, str]], early: AnswerBegun | None) -> Reply:
        """The LLM's answer, each sentence spoken as it comes (TTS of one overlaps generation of
        the next); the speaker and the generation are this turn's own tasks, awaited here."""
        now = self._clock.wall()
        feed = SentenceFeed(turn, lambda sentence, first: self._facts.check(sentence, text, now, first=first), lambda: self._speaker.mark("llm_first_token"))
        speaker = asyncio.create_task(self._speaker.speak(feed.sentences, turn))
        try:
            if early is not None:
                self._emit(EarlyAnswer(used=True))
                feed.generating = asyncio.create_task(early.follow(feed.got_text))
            else:
                tools = action_functions(self.profile) if self.m.llm.calls_tools else []
                feed.generating = asyncio.create_task(
                    self.m.llm.generate(messages, self.cfg.llm_max_tokens, self.cfg.llm_temperature, feed.got_text, tools)
                )
            try:
                reply = await feed.generating
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not feed.replaced or (current is not None and current.cancelling()):
                    raise
                reply = Reply("")
            feed.flush()
        finally:
            feed.close()
            if turn.cancelled:
                speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=turn.cancelled)
        return reply

    async def _speak_fact(self, turn: Turn, text: str) -> Reply:
        """An answer from the business's data: no LLM, spoken as an answer's sentence is."""
        self._speaker.mark("llm_first_token")
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        sentences.put_nowait(text)
        sentences.put_nowait(None)
        await self._speaker.speak(sentences, turn)
        return Reply(text)

    async def _answered(self, turn: Turn, reply: Reply) -> None:
        """The answer was spoken: into the history, and the action it asked for, if any."""
        said = turn.heard(None) or reply.text
        self._dialogue.answered(turn, said)
        action = self._tool_action(reply)
        if action is not None:
            self._emit(action)  # after what it said: the engine has the announcement said, then acts
        elif reply.tool_calls and not said:
            await self._say(self.profile.unknown_answer)  # a call that cannot be done, and nothing said
        else:
            self._dialogue.offered = offered_department(said, self.profile)

    async def _turn_lost(self, turn: Turn, e: StageBusy | StageFailed) -> None:
        """Refused at once (more callers than the models serve: their queue is full), or lost (a
        model process died or hung mid-turn and is being restarted, a server failed or was too
        slow): say so briefly rather than leave the caller in silence. The apology is pinned in the
        speech cache: it costs the models nothing."""
        busy = isinstance(e, StageBusy)
        if turn.hold is not None:
            turn.hold.cancel()
        if not busy:
            self._emit(ProviderError(f"turn lost: {e}"))
        self._emit(TurnFailed(f"models busy: {e}" if busy else f"turn lost: {e}", busy))
        await self._say(self.cfg.apology)
        down = [s.name for s in self.m.stages if not s.available]
        if not busy and down and self._fallback:
            self._emit(ProviderError(f"{', '.join(down)} down: moving the call to {self._fallback}", fatal=True))

    def _tool_action(self, reply: Reply) -> ActionRequest | None:
        """The action of the reply's first tool call; a call that cannot be done is reported (the
        answer's text, if any, has been spoken)."""
        if not reply.tool_calls:
            return None
        call = reply.tool_calls[0]
        action = action_for(call.name, call.arguments, self.profile)
        if isinstance(action, str):
            self._emit(ProviderError(f"the LLM called {call.name}({call.arguments[:100]}): {action}"))
            return None
        return action

    async def _say(self, text: str) -> bool:
        """One whole utterance of the agent's (the greeting, the apology, a line the engine asks
        for); False if it could not be spoken."""
        speech = await self._speaker.line(text)
        if speech is None:
            return False
        self._turn = Turn(spoken=[(text, speech.seconds)], recorded=True)
        self._speaker.play(text, speech)
        self._dialogue.said(text)
        return True

    async def say(self, text: str) -> bool:
        return await self._say(text)

    async def say_next(self, text: str) -> bool:
        """After the answer under way (its audio queued ahead of the line's), when the caller is
        quiet (at most CALLER_HOLDS_S of their talking)."""
        answering = self._turn_task
        if answering is not None and not answering.done():
            await asyncio.wait([answering])
        await self._caller_quiet.wait(self._clock, CALLER_HOLDS_S)
        if self._held:
            return False  # taken over meanwhile: the operator speaks for themselves
        return await self._say(text)

    def instruct(self, text: str) -> bool:
        self._dialogue.instructions.append(text)
        return True

    def hold_answers(self, held: bool, note: str = "") -> bool:
        self._held = held
        if held:
            self._drop_early()
        elif note:
            self._dialogue.note(note)
        return True

    # ---- control
    def _cancel_turn(self, played_s: float | None = None) -> None:
        """Stops the turn; the history keeps what the caller heard of its answer."""
        turn = self._turn
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()
        if turn is None or turn.cancelled:
            return
        turn.cancelled = True
        self._dialogue.cut(turn, played_s)

    async def cancel_response(self, played_s: float | None = None) -> None:
        self._cancel_turn(played_s)

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation as the LLM sees it (earlier turns)."""
        return list(self._dialogue.history)

    async def stop(self) -> None:
        self._cancel_turn()
        self._caller.stop()
        if self._early is not None:
            self._early.drop()  # the call is over: nothing to count
        await self._tasks.cancel()


class PipelineProvider(Provider):
    speaks_text = True

    def __init__(
        self, name: str, config: ProvidersConfig, pool: StagePool, profiles: Sequence[AgentProfile] = ()
    ) -> None:
        self.name = name
        self.cfg = config.local
        self.spec = config.pipeline(name)
        self.fallback = config.fallback_for(name)
        self.pool = pool
        self.profiles = profiles
        self.models: Pipeline | None = None
        self._error: str | None = None

    async def load(self) -> None:
        """Starts its stages (a clear ModelNotFound names the setting and path when a local model
        file is missing; a server that does not answer yet is shown as down, not an error). The
        profiles' fixed lines (greetings, closing lines, announcements), the apology and the hold line
        are synthesized now, so they cost nothing on a call and play even while the TTS is down; their
        instructions are read by an in-process LLM now (its prefix cache)."""
        try:
            stt, llm, voice = await self.pool.stages(self.spec)
        except Exception as e:
            self._error = str(e)
            raise
        self.models = Pipeline(stt, llm, voice)
        await self.prepare(self.profiles)

    async def prepare(self, profiles: Sequence[AgentProfile]) -> None:
        m = self.models
        if m is None:
            return
        for system in dict.fromkeys(p.instructions() for p in profiles):
            try:
                await m.llm.prime(system)
            except (StageBusy, StageFailed) as e:
                log.warning("%s: the LLM could not read a profile's instructions ahead: %s", self.name, e)
        for text in dict.fromkeys((*(t for p in profiles for t in p.fixed_phrases()), self.cfg.apology, self.cfg.hold_line)):
            if text and m.cache.get(text) is None:
                try:
                    m.cache.put(text, await m.voice.tts.synthesize(spoken(text)), pin=True)
                except (StageBusy, StageFailed) as e:
                    log.warning("%s: could not synthesize %r ahead (%s); it will be on its first use", self.name, text, e)

    def readiness(self) -> Readiness:
        m = self.models
        if m is None:
            return Readiness(False, self._error or "models not loaded")
        down = [s.status() for s in m.stages if not s.available]
        if down:
            return Readiness(False, "; ".join(f"{st.name} {st.state}: {st.last_error}" for st in down))
        return Readiness(True, " + ".join(_describe(s) for s in m.stages))

    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall:
        assert self.models is not None, "load() first"
        return PipelineCall(ctx, emit, self.models, self.cfg, self.fallback)

    # Its stages' state and queues are the pool's (StagePool.statuses, queues): stages are shared
    # between pipelines.
    async def close(self) -> None:
        """The stages are the pool's: the engine closes it after its providers."""


def _describe(stage: Stage) -> str:
    detail = getattr(stage, "detail", "")
    if detail:
        return f"piper {detail} Hz" if isinstance(stage, WorkerTts) else str(detail)
    return stage.name
