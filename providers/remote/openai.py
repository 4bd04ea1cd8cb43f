"""Stages over the OpenAI-compatible HTTP API: Chat Completions for the LLM (streamed), and
``/audio/transcriptions`` and ``/audio/speech`` for STT and TTS. llama.cpp's server
(``python -m llama_cpp.server``), vLLM, Ollama and OpenAI itself speak it.

One aiohttp session per server (its connection pool), closed with it. Cancelling a generation
closes its stream, which is how the server learns to stop (llama.cpp's server frees the slot).
"""

from __future__ import annotations

import io
import json
import re
import wave
from typing import Any, Callable, Sequence

import aiohttp

from media.audio import wav_bytes
from providers.config import ModelServerConfig
from runtime.clock import Clock
from providers.remote.server import ModelServer, ServerStage
from providers.stages import LanguageModel, Message, Priority, Reply, Speech, SpeechToText, StageFailed, TextToSpeech, Tool, ToolCall

SPEECH_RATE = 24000  # OpenAI's /audio/speech "pcm": 24 kHz 16-bit mono


class OpenAiServer(ModelServer):
    def __init__(self, name: str, cfg: ModelServerConfig, *, clock: Clock | None = None) -> None:
        super().__init__(name, cfg, clock=clock)
        self.base = cfg.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            # sock_connect bounds a server that is not there; each job bounds its own wait for an answer.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.timeout_s)
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=timeout, connector=aiohttp.TCPConnector(limit=self.cfg.max_concurrency)
            )
        return self._session

    async def post(self, path: str, timeout: aiohttp.ClientTimeout, json_body: Any = None, form: Callable[[], aiohttp.FormData] | None = None) -> aiohttp.ClientResponse:
        """POST, once more on a new connection if the server closed the kept-alive one it went
        out on (no answer had come: llama-server closes one now and then after a stream)."""
        for attempt in (1, 2):
            try:
                return await self.session.post(f"{self.base}{path}", json=json_body, data=form() if form else None, timeout=timeout)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def probe(self) -> None:
        async with self.session.get(f"{self.base}/models") as r:
            if r.status not in (404, 405):  # a speech-only server may have no model list: it answered
                await _check(r)
            await r.read()

    async def close(self) -> None:
        await super().close()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _check(r: aiohttp.ClientResponse) -> None:
    if r.status >= 400:
        raise StageFailed(f"HTTP {r.status} from {r.url.path}: {_error_text(await r.text(errors='replace'))}")


def _error_text(body: str) -> str:
    """What an error reply says: its message ({"error": {"message": ...}}, as OpenAI, llama.cpp's
    server and vLLM send), else the body. Cleaned where it enters: ModelServer.describe."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return str(error)


class OpenAiLlm(ServerStage[OpenAiServer], LanguageModel):
    @property
    def calls_tools(self) -> bool:
        return self.server.cfg.tools

    async def generate(
        self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None], tools: Sequence[Tool] = ()
    ) -> Reply:
        s = self.server
        body: dict[str, Any] = {
            "model": s.cfg.model or "default",
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        if tools:
            body["tools"] = [{"type": "function", "function": t} for t in tools]
        stream = _Stream(text_calls=bool(tools))
        async with s.job():
            async with await s.post("/chat/completions", aiohttp.ClientTimeout(sock_read=s.cfg.timeout_s), json_body=body) as r:
                await _check(r)
                # Server-sent events: "data: {json}" lines, "data: [DONE]" at the end.
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        stream.finished = True
                        break
                    piece = stream.feed(json.loads(data))
                    if piece:
                        on_text(piece)
            if not stream.finished:  # cut off: a half answer is not an answer
                raise StageFailed(f"{s.label}: the answer's stream ended before it was finished")
        reply, held = stream.reply()
        if held:
            on_text(held)
        return reply


# How a model starts a tool call it writes as text (servers without a tool parser for its chat
# template pass it on as content: llama-server with the default Qwen2.5-Coder writes ```json).
_TEXT_CALL = ("{", "```", "<tool_call>")
_FENCES = re.compile(r"^(?:```(?:json)?|<tool_call>)\s*|\s*(?:```|</tool_call>)$")


class _Stream:
    """A streamed Chat Completion put together: its text, and its tool calls, whose name and
    arguments come in pieces by index. With ``text_calls``, text that starts like a tool call is
    held back until the end: a call is not spoken to the caller."""

    def __init__(self, text_calls: bool) -> None:
        self.text: list[str] = []
        self.calls: dict[int, tuple[str, str]] = {}  # index -> (name, arguments so far)
        self.finished = False
        self._undecided = text_calls  # whether the text so far may still be a tool call
        self._held = False

    def feed(self, chunk: dict[str, Any]) -> str:
        """Takes one chunk; returns the text to pass on now."""
        if "error" in chunk:
            raise StageFailed(f"server error: {str(chunk['error'])[:200]}")
        choices = chunk.get("choices") or []
        if not choices:
            return ""
        self.finished = self.finished or choices[0].get("finish_reason") is not None
        delta = choices[0].get("delta") or {}
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") or {}
            index = int(call.get("index", 0))
            name, args = self.calls.get(index, ("", ""))
            self.calls[index] = (name + (fn.get("name") or ""), args + (fn.get("arguments") or ""))
        content = delta.get("content")
        if not isinstance(content, str) or not content:
            return ""
        self.text.append(content)
        if self._held:
            return ""
        if self._undecided:
            start = "".join(self.text).lstrip()
            if start.startswith(_TEXT_CALL):
                self._held, self._undecided = True, False
                return ""
            if not start or any(p.startswith(start) for p in _TEXT_CALL):
                return ""  # too short to tell
            self._undecided = False
            return "".join(self.text)
        return content

    def reply(self) -> tuple[Reply, str]:
        """The reply, and its text not passed on yet (held back, and not a tool call after all)."""
        text = "".join(self.text)
        calls = [ToolCall(n, a) for _, (n, a) in sorted(self.calls.items()) if n]
        if not calls and (self._held or self._undecided):
            call = _text_call(text)
            if call is not None:
                return Reply("", (call,)), ""
            return Reply(text), text
        return Reply(text, tuple(calls)), ""


def _text_call(text: str) -> ToolCall | None:
    """A tool call written as text: {"name": ..., "arguments": {...}}, bare, fenced or tagged."""
    try:
        obj = json.loads(_FENCES.sub("", text.strip()))
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args))


class OpenAiStt(ServerStage[OpenAiServer], SpeechToText):
    async def transcribe(self, pcm16: bytes, prompt: str, priority: Priority = Priority.NOW) -> str:
        s = self.server
        wav = wav_bytes(pcm16, 16000)

        def form() -> aiohttp.FormData:  # one per attempt: a form is sent once
            f = aiohttp.FormData()
            f.add_field("file", wav, filename="speech.wav", content_type="audio/wav")
            f.add_field("model", s.cfg.model or "whisper-1")
            f.add_field("response_format", "json")
            if prompt:
                f.add_field("prompt", prompt)
            return f

        async with s.job():
            async with await s.post("/audio/transcriptions", aiohttp.ClientTimeout(total=s.cfg.timeout_s), form=form) as r:
                await _check(r)
                reply = await r.json(content_type=None)
            text = reply.get("text") if isinstance(reply, dict) else None
            if not isinstance(text, str):  # in the job: the reply is the server's text
                raise StageFailed(f"{s.label}: a transcription reply without text: {str(reply)[:200]}")
        return text.strip()


class OpenAiTts(ServerStage[OpenAiServer], TextToSpeech):
    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        s = self.server
        body = {"model": s.cfg.model or "tts-1", "input": text, "voice": s.cfg.voice or "alloy", "response_format": "pcm"}
        async with s.job():
            async with await s.post("/audio/speech", aiohttp.ClientTimeout(total=s.cfg.timeout_s), json_body=body) as r:
                await _check(r)
                data = await r.read()
        if data[:4] == b"RIFF":  # some servers send WAV whatever was asked
            with wave.open(io.BytesIO(data)) as w:
                return Speech(w.readframes(w.getnframes()), w.getframerate())
        return Speech(data[: len(data) // 2 * 2], SPEECH_RATE)
