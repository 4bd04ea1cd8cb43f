"""A local stand-in for Deepgram's Voice Agent websocket (wss://agent.deepgram.com/v1/agent/converse),
speaking the documented protocol, so that the real deepgram-sdk can be tested against it.

Per connection: Welcome; the client's Settings (checked) -> SettingsApplied; the greeting, if set
(ConversationText, AgentStartedSpeaking, u-law audio, AgentAudioDone); then, for every stretch of
caller speech it hears in the binary audio (linear16): UserStartedSpeaking at its start and, after
400 ms of silence, ConversationText(user), AgentThinking, ConversationText(assistant),
AgentStartedSpeaking, the answer as binary u-law 8 kHz (a tone, sent faster than real time as
the real service does) and AgentAudioDone. KeepAlive is counted; UpdatePrompt
is recorded and acknowledged (PromptUpdated). Knobs make it misbehave: drop the
socket after N turns, send an Error, request a function call, or go silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field

import numpy as np
from aiohttp import WSMsgType, web

from media.audio import pcm16_to_ulaw, rms_dbfs

API_KEY = "test-key-123"
FRAME = 640  # 20 ms of 16 kHz linear16


def tone_ulaw(ms: int, hz: float = 600.0) -> bytes:
    t = np.arange(8 * ms) / 8000
    return pcm16_to_ulaw((np.sin(2 * np.pi * hz * t) * 9000).astype(np.int16).tobytes())


@dataclass
class Behaviour:
    answer_ms: int = 1500
    close_after_turns: int | None = None  # drop the socket (once) after this many answers
    close_every_turn: bool = False  # drop the socket after every answer (each reconnect is a good session)
    error_after_turns: int | None = None  # send an Error message after this many answers
    # (name, JSON arguments): ask the client to run this function before answering
    function_call: tuple[str, str] | None = None
    silent: bool = False  # never answer anything after SettingsApplied (for the watchdog)
    close_after_applied: bool = False  # drop the socket (once) right after SettingsApplied


@dataclass
class Seen:
    """What the server received, for tests to check."""

    connections: int = 0
    auth_headers: list[str] = field(default_factory=list)
    settings: list[dict] = field(default_factory=list)
    audio_bytes: int = 0
    audio_before_applied: int = 0
    keepalives: int = 0
    function_responses: list[dict] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)  # InjectAgentMessage texts, spoken
    injected_behaviour: list[str] = field(default_factory=list)  # their "behavior" ("" when not given)
    prompt_updates: list[str] = field(default_factory=list)  # UpdatePrompt texts (added to the prompt)
    client_messages: list[str] = field(default_factory=list)
    answers: int = 0


class FakeDeepgram:
    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.seen = Seen()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._closed_once = False
        self._function_answered = asyncio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/v1/agent/converse", self._converse)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.seen.auth_headers.append(auth)
        if auth != f"Token {API_KEY}":
            return web.Response(status=401, text="invalid credentials")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.seen.connections += 1
        b = self.behaviour
        await ws.send_json({"type": "Welcome", "request_id": str(uuid.uuid4())})
        applied = False
        speaking = False
        voiced = silent = 0
        turns = 0
        answering: asyncio.Task | None = None
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                self.seen.audio_bytes += len(msg.data)
                if not applied:
                    self.seen.audio_before_applied += len(msg.data)
                    await ws.send_json({"type": "Error", "description": "audio before settings", "code": "UNPARSABLE_CLIENT_MESSAGE"})
                    await ws.close()
                    break
                for i in range(0, len(msg.data) - FRAME + 1, FRAME):
                    loud = rms_dbfs(msg.data[i : i + FRAME]) > -40
                    voiced = voiced + 1 if loud else 0
                    silent = 0 if loud else silent + 1
                    if not speaking and voiced >= 3:
                        speaking = True
                        if not b.silent:
                            await ws.send_json({"type": "UserStartedSpeaking"})
                    elif speaking and silent >= 20:
                        speaking = False
                        if not b.silent and (answering is None or answering.done()):
                            turns += 1
                            answering = asyncio.create_task(self._answer(ws, turns, self.seen.answers + 1))
            elif msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                kind = data.get("type")
                self.seen.client_messages.append(kind)
                if kind == "Settings":
                    self.seen.settings.append(data)
                    problem = self._check_settings(data)
                    if problem:
                        await ws.send_json({"type": "Error", "description": problem, "code": "INVALID_SETTINGS"})
                        await ws.close()
                        break
                    applied = True
                    await ws.send_json({"type": "SettingsApplied"})
                    if b.close_after_applied and not self._closed_once:
                        self._closed_once = True
                        await ws.close()
                        break
                    greeting = data["agent"].get("greeting")
                    if greeting and not b.silent:
                        await self._speak(ws, greeting, 800)
                elif kind == "KeepAlive":
                    self.seen.keepalives += 1
                elif kind == "FunctionCallResponse":
                    self.seen.function_responses.append(data)
                    self._function_answered.set()
                elif kind == "UpdatePrompt":
                    self.seen.prompt_updates.append(data["prompt"])
                    await ws.send_json({"type": "PromptUpdated"})
                elif kind == "InjectAgentMessage":
                    self.seen.injected.append(data["message"])
                    self.seen.injected_behaviour.append(data.get("behavior") or "")
                    await self._speak(ws, data["message"], 600)
        if answering is not None:
            answering.cancel()
        return ws

    @staticmethod
    def _check_settings(s: dict) -> str | None:
        try:
            inp, out = s["audio"]["input"], s["audio"]["output"]
            agent = s["agent"]
            assert inp["encoding"] == "linear16" and inp["sample_rate"] == 16000, "input must be linear16 16000"
            assert out["encoding"] in ("mulaw", "linear16"), "unknown output encoding"
            assert agent["listen"]["provider"]["model"] and agent["think"]["provider"]["model"] and agent["speak"]["provider"]["model"], "models missing"
        except (KeyError, TypeError, AssertionError) as e:
            return f"invalid Settings: {e}"
        return None

    async def _answer(self, ws: web.WebSocketResponse, turn: int, n: int) -> None:
        """``turn``: this connection's count, ``n``: the server's (names the answer)."""
        b = self.behaviour
        await ws.send_json({"type": "ConversationText", "role": "user", "content": f"caller turn {n}"})
        if b.function_call is not None:
            name, args = b.function_call
            self._function_answered.clear()
            await ws.send_json({"type": "FunctionCallRequest", "functions": [{"id": f"fc-{turn}", "name": name, "arguments": args, "client_side": True}]})
            with contextlib.suppress(TimeoutError):  # the agent goes on without one after a second
                await asyncio.wait_for(self._function_answered.wait(), 1.0)
        await ws.send_json({"type": "AgentThinking", "content": "thinking"})
        await asyncio.sleep(0.05)
        self.seen.answers += 1
        await self._speak(ws, f"answer {n}", b.answer_ms)
        if b.error_after_turns is not None and turn >= b.error_after_turns:
            await ws.send_json({"type": "Error", "description": "think provider timed out", "code": "THINK_TIMEOUT"})
        if b.close_every_turn or (b.close_after_turns is not None and turn >= b.close_after_turns and not self._closed_once):
            self._closed_once = True
            await ws.close()

    async def _speak(self, ws: web.WebSocketResponse, text: str, ms: int) -> None:
        await ws.send_json({"type": "ConversationText", "role": "assistant", "content": text})
        await ws.send_json({"type": "AgentStartedSpeaking", "total_latency": 0.4, "tts_latency": 0.1, "ttt_latency": 0.3})
        audio = tone_ulaw(ms)
        for i in range(0, len(audio), 1600):  # 200 ms chunks, twice real time
            await ws.send_bytes(audio[i : i + 1600])
            await asyncio.sleep(0.1)
        await ws.send_json({"type": "AgentAudioDone"})
