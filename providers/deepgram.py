"""The Deepgram Voice Agent provider, on the official deepgram-sdk.

One Voice Agent websocket per call: Welcome, then our Settings, then SettingsApplied; only then
does caller audio go out (PCM16 16 kHz). The server's messages become provider events: transcripts,
barge-in (UserStartedSpeaking), agent audio (u-law 8 kHz) and speaking marks. A socket that drops
is reconnected with backoff and Settings sent again; after too many failures in a row the call
is handed to the fallback provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from typing import Any, Sequence

from media.audio import ulaw_to_pcm16
from runtime.backoff import Backoff
from runtime.clock import Clock, LoopClock, Timer, sleep
from runtime.tasks import OwnedTasks
from providers.config import DeepgramProviderConfig
from providers.circuit import CircuitBreaker
from providers.profile import AgentProfile
from providers.redact import server_text
from providers.tools import action_for, action_functions
from providers.base import (
    AgentAudio,
    AgentSpeakingStarted,
    AgentSpeakingStopped,
    CallContext,
    CallerInterrupted,
    EmitFn,
    Provider,
    ProviderCall,
    ProviderError,
    Readiness,
    Transcript,
    TurnMark,
)

log = logging.getLogger(__name__)

API_KEY_ENV = "DEEPGRAM_API_KEY"
QUEUE_FRAMES = 100  # 2 s of caller audio held while (re)connecting; older frames are dropped


class SessionReset(Exception):
    """The watchdog gave up on a silent server."""


def settings_message(
    cfg: DeepgramProviderConfig, profile: AgentProfile, input_rate: int, greet: bool = True, added: Sequence[str] = (),
) -> dict[str, Any]:
    """``added``: an operator's instructions for this call so far (a session opened again keeps them)."""
    out_rate = 8000 if cfg.output_encoding == "mulaw" else 16000
    prompt = "".join((profile.instructions(), *(prompt_addition(text) for text in added)))
    agent: dict[str, Any] = {
        "listen": {"provider": {"type": "deepgram", "model": cfg.listen_model}},
        "think": {"provider": {"type": cfg.think_provider, "model": cfg.think_model}, "prompt": prompt, "functions": action_functions(profile)},
        "speak": {"provider": {"type": "deepgram", "model": cfg.speak_model}},
    }
    if profile.greeting and greet:
        agent["greeting"] = profile.greeting
    return {
        "type": "Settings",
        "audio": {
            "input": {"encoding": "linear16", "sample_rate": input_rate},
            "output": {"encoding": cfg.output_encoding, "sample_rate": out_rate, "container": "none"},
        },
        "agent": agent,
    }


def prompt_addition(text: str) -> str:
    """An operator's instruction as UpdatePrompt adds it to the agent's prompt (it appends, it does
    not replace)."""
    return f"\n\nThe operator's instruction for this call (it comes first where it differs from the above): {text}"


class DeepgramCall(ProviderCall):
    def __init__(self, ctx: CallContext, emit: EmitFn, cfg: DeepgramProviderConfig, api_key: str, breaker: CircuitBreaker) -> None:
        self.ctx = ctx
        self.breaker = breaker
        self._emit = emit
        self.cfg = cfg
        self._api_key = api_key
        self._clock = ctx.clock
        self._tasks = OwnedTasks(f"[{ctx.call_id}] deepgram")  # the session, its sender and keeper, function answers
        self._audio: deque[bytes] = deque(maxlen=QUEUE_FRAMES)
        self._audio_ready = asyncio.Event()
        self._sock: Any = None
        self._applied = False
        self._stopped = False
        self._caller_speaking = False
        self._lost: Exception | None = None  # why the keeper ended the session
        self._keeper: Timer | None = None
        self._last_server_msg = self._clock.now()
        self._last_sent = self._clock.now()
        self.connects = 0
        self.connects_ok = 0  # sessions that reached SettingsApplied
        self._failures = 0  # in a row, since the last good session
        self.keepalives = 0
        self.out_rate = 8000 if cfg.output_encoding == "mulaw" else 16000
        self.instructions: list[str] = []  # an operator's, for the rest of this call

    def _client(self):
        return client(self.cfg, self._api_key)

    async def start(self) -> None:
        self._tasks.spawn(self._session_task())

    async def _session_task(self) -> None:
        """The session is this call's: if it dies of a bug, the call moves to the fallback. Logged
        here, in the words ``describe`` cleans (the SDK's errors carry the key)."""
        try:
            await self._run()
        except Exception as e:
            why = describe(e, self._api_key)
            log.error("[%s] Deepgram session task failed: %s", self.ctx.call_id, why, exc_info=e)
            self._emit(ProviderError(f"Deepgram session failed: {why}", fatal=True))

    # ---- caller audio
    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        self._audio.append(pcm16)
        self._audio_ready.set()

    def utterance_started(self) -> None:
        self._caller_speaking = True

    def utterance_ended(self, fallback: bool) -> None:
        self._caller_speaking = False  # Deepgram finds its own turns; this only arms the watchdog

    # ---- the session
    async def _run(self) -> None:
        backoff = Backoff(self.cfg.reconnect_initial_s, self.cfg.reconnect_max_s)
        self._failures = 0
        while not self._stopped:
            try:
                await self._session()
                if self._stopped:
                    return
                raise ConnectionError("server closed the session")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # dropped socket, refused connect, Error close, watchdog
                established = self._applied
                self._applied = False
                self._sock = None
                if self._stopped:
                    return
                self._failures += 1
                why = describe(e, self._api_key)
                if not established:
                    self.breaker.failure(why)
                if self.connects_ok == 0:
                    # Never got a session: the caller is waiting in silence, so the fallback takes
                    # the call now (and, the circuit open, the next callers go there directly).
                    self._emit(ProviderError(f"Deepgram unavailable ({why})", fatal=True))
                    return
                if self._failures > self.cfg.reconnect_attempts:
                    self._emit(ProviderError(f"Deepgram unavailable after {self._failures} attempts ({why})", fatal=True))
                    return
                delay = backoff.next_delay()
                log.warning("[%s] Deepgram session lost (%s); reconnecting in %.1fs", self.ctx.call_id, why, delay)
                self._emit(ProviderError(f"Deepgram session lost ({why}); reconnecting"))
                await sleep(self._clock, delay)

    async def _session(self) -> None:
        async with self._client().agent.v1.connect() as sock:
            self._sock = sock
            self.connects += 1
            self._last_server_msg = self._clock.now()
            welcome = await asyncio.wait_for(self._recv_json(sock), self.cfg.connect_timeout_s)
            if getattr(welcome, "type", None) != "Welcome":
                raise ConnectionError(f"expected Welcome, got {getattr(welcome, 'type', welcome)!r}")
            from deepgram.agent.v1.types import AgentV1Settings

            # After a reconnect the caller has heard the greeting already.
            settings = settings_message(self.cfg, self.ctx.profile, self.ctx.input_sample_rate, greet=self.connects == 1, added=self.instructions)
            await sock.send_settings(AgentV1Settings.model_validate(settings))
            # No audio before SettingsApplied; other messages may come first and are handled.
            while not self._applied:
                msg = await asyncio.wait_for(sock.recv(), self.cfg.connect_timeout_s)
                self._handle(msg)
            self._lost = None
            sender = self._tasks.spawn(self._send_audio(sock))
            self._keep_later(sock)
            try:
                async for msg in sock:
                    self._handle(msg)
                    if self._lost is not None:
                        break
            finally:
                if self._keeper is not None:
                    self._keeper.cancel()
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            if self._lost is not None:
                raise self._lost

    async def _recv_json(self, sock: Any) -> Any:
        while True:
            msg = await sock.recv()
            if not isinstance(msg, bytes):
                self._last_server_msg = self._clock.now()
                return msg

    async def _send_audio(self, sock: Any) -> None:
        """Caller audio out as it comes. A send that fails ends it quietly: the socket is gone, and
        the session's reader says so."""
        try:
            while True:
                await self._audio_ready.wait()
                while self._audio:
                    await sock.send_media(self._audio.popleft())
                    self._last_sent = self._clock.now()
                self._audio_ready.clear()
        except Exception as e:
            log.debug("[%s] Deepgram audio send ended: %s", self.ctx.call_id, describe(e, self._api_key))

    def _keep(self, sock: Any) -> None:
        """A look every ``keepalive_interval_s`` (at most a second), on the call's clock: a
        keep-alive while no audio goes out; the session reset when a speaking caller hears nothing
        from the server. ``_lost`` then says why the session ends."""
        now = self._clock.now()
        if now - self._last_sent >= self.cfg.keepalive_interval_s:
            self._last_sent = now
            self._tasks.spawn(self._keep_alive(sock))
        if self._caller_speaking and now - self._last_server_msg > self.cfg.watchdog_s:
            self._lost = SessionReset(f"no message from Deepgram for {self.cfg.watchdog_s:.0f} s while the caller spoke")
            self._tasks.spawn(sock._websocket.close())  # ends the session's reader
            return
        self._keep_later(sock)

    def _keep_later(self, sock: Any) -> None:
        self._keeper = self._clock.call_later(min(1.0, self.cfg.keepalive_interval_s), self._keep, sock)

    async def _keep_alive(self, sock: Any) -> None:
        try:
            await sock.send_keep_alive()
        except Exception as e:
            if self._sock is sock:
                self._lost = e  # the session ends at the server's next message
            return
        self.keepalives += 1

    # ---- server messages
    def _handle(self, msg: Any) -> None:
        now = self._clock.now()
        self._last_server_msg = now
        if isinstance(msg, bytes):
            pcm = ulaw_to_pcm16(msg) if self.cfg.output_encoding == "mulaw" else msg
            self._emit(AgentAudio(pcm, self.out_rate))
            return
        kind = getattr(msg, "type", None) if not isinstance(msg, dict) else msg.get("type")
        if kind == "SettingsApplied":
            self._applied = True
            self.connects_ok += 1
            self._failures = 0  # a good session: failures count afresh
            self.breaker.success()
        elif kind == "ConversationText":
            if msg.role == "user":
                self._emit(TurnMark("stt_final", now))
            self._emit(Transcript("caller" if msg.role == "user" else "agent", msg.content))
        elif kind == "UserStartedSpeaking":
            self._emit(CallerInterrupted())
        elif kind == "AgentThinking":
            self._emit(TurnMark("llm_first_token", now))
        elif kind == "AgentStartedSpeaking":
            self._emit(TurnMark("tts_first_audio", now))
            self._emit(AgentSpeakingStarted())
        elif kind == "AgentAudioDone":
            # Only the server is done sending: gating lasts until the engine's playout ends.
            self._emit(AgentSpeakingStopped())
        elif kind == "FunctionCallRequest":
            for fn in msg.functions:
                if getattr(fn, "client_side", True):
                    self._tasks.spawn(self._answer_function(fn))
        elif kind in ("Warning", "Error"):
            text = f"Deepgram {kind.lower()} {server_text(f'{msg.code}: {msg.description}', (self._api_key,))}"
            if kind == "Error":
                self._emit(ProviderError(text))
            else:
                log.warning("[%s] %s", self.ctx.call_id, text)
        elif kind in ("PromptUpdated", "SpeakUpdated", "Welcome"):
            log.info("[%s] Deepgram %s", self.ctx.call_id, kind)

    def function_result(self, name: str, arguments: str) -> dict[str, Any]:
        """Carries out one of the action functions (as an ActionRequest for the engine) and says
        how it went; anything else is refused, so that the agent carries on instead of waiting."""
        action = action_for(name, arguments, self.ctx.profile)
        if isinstance(action, str):
            return {"error": action}
        self._emit(action)
        return {"ok": True, "status": "the call is ending" if action.kind == "hangup" else f"transferring to {action.department}"}

    async def _answer_function(self, fn: Any) -> None:
        from deepgram.agent.v1.types import AgentV1SendFunctionCallResponse

        content = json.dumps(self.function_result(fn.name, fn.arguments))
        if self._sock is not None:
            await self._sock.send_function_call_response(
                AgentV1SendFunctionCallResponse(type="FunctionCallResponse", id=fn.id, name=fn.name, content=content)
            )

    async def say(self, text: str) -> bool:
        return await self._inject(text, "interrupt")

    async def say_next(self, text: str) -> bool:
        return await self._inject(text, "queue")  # after what is queued, without cutting the agent off

    async def _inject(self, text: str, behavior: str) -> bool:
        if self._sock is None or not self._applied:
            return False
        from deepgram.agent.v1.types import AgentV1InjectAgentMessage

        await self._sock.send_inject_agent_message(AgentV1InjectAgentMessage(message=text, behavior=behavior))
        return True

    def instruct(self, text: str) -> bool:
        """UpdatePrompt adds to the session's prompt; a session opened again gets it in Settings."""
        self.instructions.append(text)
        if self._sock is not None and self._applied:
            self._tasks.spawn(self._update_prompt(self._sock, text))
        return True

    async def _update_prompt(self, sock: Any, text: str) -> None:
        from deepgram.agent.v1.types import AgentV1UpdatePrompt

        try:
            await sock.send_update_prompt(AgentV1UpdatePrompt(prompt=prompt_addition(text)))
        except Exception as e:  # the session is gone: the next one's Settings carry it
            log.warning("[%s] Deepgram UpdatePrompt not sent (%s): the next session has it", self.ctx.call_id, describe(e, self._api_key))

    # hold_answers: not possible. The Voice Agent answers every turn it hears, and has no message
    # that keeps it listening without answering; muting its audio would leave answers the caller
    # never heard in its history. A take-over is refused on Deepgram (move the call to a pipeline
    # provider first).

    async def stop(self) -> None:
        self._stopped = True
        await self._tasks.cancel()


class DeepgramProvider(Provider):
    name = "deepgram"
    continuous_input = True
    speaks_text = True

    def __init__(self, cfg: DeepgramProviderConfig, *, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self._key = os.environ.get(API_KEY_ENV, "")
        self._clock = clock or LoopClock()  # the circuit and its probe's
        self.breaker = CircuitBreaker(open_s=cfg.circuit_open_s, clock=self._clock)
        self._tasks = OwnedTasks("deepgram provider")  # the half-open probe

    async def load(self) -> None:
        # A missing key is not a startup failure: the engine reports the provider not ready and
        # sends calls to the fallback.
        self._key = os.environ.get(API_KEY_ENV, "")
        if self._key:
            self._tasks.spawn(self._probe_loop())

    def readiness(self) -> Readiness:
        if not self._key:
            return Readiness(False, f"{API_KEY_ENV} is not set")
        b = self.breaker
        where = self.cfg.agent_url or "wss://agent.deepgram.com"
        if not b.closed:
            return Readiness(False, f"unreachable ({b.last_error}); new calls go to the fallback; next try in {b.seconds_to_probe():.0f} s")
        seen = f"{b.successes} session(s) ok" if b.successes else "no session yet"
        return Readiness(True, f"Voice Agent at {where}; {seen}" + (f"; last error: {b.last_error}" if b.last_error else ""))

    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall:
        return DeepgramCall(ctx, emit, self.cfg, self._key, self.breaker)

    async def _probe_loop(self) -> None:
        """While the circuit is open, one real connection now and then (half-open probe)."""
        while True:
            await sleep(self._clock, 0.5)
            if not self.breaker.probe_due():
                continue
            try:
                await probe(self.cfg, self._key)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.breaker.failure(describe(e, self._key))
                log.warning("Deepgram still unreachable (%s); next try in %.0f s", self.breaker.last_error, self.breaker.open_for_s)
            else:
                self.breaker.success()
                log.info("Deepgram reachable again: new calls use it")

    async def close(self) -> None:
        await self._tasks.cancel()


def describe(e: BaseException, api_key: str) -> str:
    """A failure in one line, as it may be shown anywhere (the SDK's ApiError text carries every
    request header; a server's text may reflect the key): where Deepgram's errors enter."""
    status = getattr(e, "status_code", None)
    if status is not None:
        text = f"HTTP {status}: {getattr(e, 'body', '')}"
    else:
        text = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
    return server_text(text, (api_key,))


def client(cfg: DeepgramProviderConfig, api_key: str):
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment

    if cfg.agent_url:
        prod = DeepgramClientEnvironment.PRODUCTION
        env = DeepgramClientEnvironment(base=prod.base, production=prod.production, agent=cfg.agent_url, agent_rest=prod.agent_rest)
        return AsyncDeepgramClient(api_key=api_key, environment=env)
    return AsyncDeepgramClient(api_key=api_key)


async def probe(cfg: DeepgramProviderConfig, api_key: str) -> None:
    """Connects and waits for Welcome (no Settings, no audio: nothing is spoken or billed)."""
    async def welcome() -> None:
        async with client(cfg, api_key).agent.v1.connect() as sock:
            while True:
                msg = await sock.recv()
                if getattr(msg, "type", None) == "Welcome":
                    return

    await asyncio.wait_for(welcome(), cfg.connect_timeout_s)
