"""Stages over the OpenAI-compatible HTTP API: Chat Completions for the LLM (streamed), and
``/audio/transcriptions`` and ``/audio/speech`` for STT and TTS. llama.cpp's server
(``python -m llama_cpp.server``), vLLM, Ollama and OpenAI itself speak it.

One aiohttp session per server (its connection pool), closed with it. Cancelling a generation
closes its stream, which is how the server learns to stop (llama.cpp's server frees the slot).
"""

from __future__ import annotations

import io
import json
import wave
from typing import Any, Callable

import aiohttp

from media.audio import wav_bytes
from providers.config import ModelServerConfig
from providers.remote.server import ModelServer, ServerStage
from providers.stages import LanguageModel, Message, Speech, SpeechToText, StageFailed, TextToSpeech

SPEECH_RATE = 24000  # OpenAI's /audio/speech "pcm": 24 kHz 16-bit mono


class OpenAiServer(ModelServer):
    def __init__(self, name: str, cfg: ModelServerConfig) -> None:
        super().__init__(name, cfg)
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
        body = (await r.text())[:200]
        raise StageFailed(f"HTTP {r.status} from {r.url.path}: {body}")


class OpenAiLlm(ServerStage[OpenAiServer], LanguageModel):
    async def generate(self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None]) -> str:
        s = self.server
        body = {
            "model": s.cfg.model or "default",
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        pieces: list[str] = []
        finished = False
        async with s.job():
            async with s.session.post(f"{s.base}/chat/completions", json=body, timeout=aiohttp.ClientTimeout(sock_read=s.cfg.timeout_s)) as r:
                await _check(r)
                # Server-sent events: "data: {json}" lines, "data: [DONE]" at the end.
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        finished = True
                        break
                    piece, done = _delta(json.loads(data))
                    finished = finished or done
                    if piece:
                        pieces.append(piece)
                        on_text(piece)
            if not finished:  # cut off: a half answer is not an answer
                raise StageFailed(f"{s.label}: the answer's stream ended before it was finished")
        return "".join(pieces)


def _delta(chunk: dict[str, Any]) -> tuple[str, bool]:
    """A streamed chunk's text, and whether it is the last one."""
    if "error" in chunk:
        raise StageFailed(f"server error: {str(chunk['error'])[:200]}")
    choices = chunk.get("choices") or []
    if not choices:
        return "", False
    content = (choices[0].get("delta") or {}).get("content")
    return (content if isinstance(content, str) else ""), choices[0].get("finish_reason") is not None


class OpenAiStt(ServerStage[OpenAiServer], SpeechToText):
    async def transcribe(self, pcm16: bytes, prompt: str) -> str:
        s = self.server
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(pcm16, 16000), filename="speech.wav", content_type="audio/wav")
        form.add_field("model", s.cfg.model or "whisper-1")
        form.add_field("response_format", "json")
        if prompt:
            form.add_field("prompt", prompt)
        async with s.job():
            async with s.session.post(f"{s.base}/audio/transcriptions", data=form, timeout=aiohttp.ClientTimeout(total=s.cfg.timeout_s)) as r:
                await _check(r)
                reply = await r.json(content_type=None)
        text = reply.get("text") if isinstance(reply, dict) else None
        if not isinstance(text, str):
            raise StageFailed(f"{s.label}: a transcription reply without text: {str(reply)[:200]}")
        return text.strip()


class OpenAiTts(ServerStage[OpenAiServer], TextToSpeech):
    async def synthesize(self, text: str) -> Speech:
        s = self.server
        body = {"model": s.cfg.model or "tts-1", "input": text, "voice": s.cfg.voice or "alloy", "response_format": "pcm"}
        async with s.job():
            async with s.session.post(f"{s.base}/audio/speech", json=body, timeout=aiohttp.ClientTimeout(total=s.cfg.timeout_s)) as r:
                await _check(r)
                data = await r.read()
        if data[:4] == b"RIFF":  # some servers send WAV whatever was asked
            with wave.open(io.BytesIO(data)) as w:
                return Speech(w.readframes(w.getnframes()), w.getframerate())
        return Speech(data[: len(data) // 2 * 2], SPEECH_RATE)
