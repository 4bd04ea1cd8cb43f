"""STT and TTS over the Wyoming protocol (Home Assistant's voice protocol: JSON event lines with
binary payloads over TCP), against wyoming-faster-whisper and wyoming-piper.

One connection per job, as Wyoming servers expect (they handle one request stream per connection);
the server's own concurrency decides how many run at once, this engine's share is bounded by the
server's ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from providers.config import ModelServerConfig
from runtime.clock import Clock
from providers.remote.server import ModelServer, ServerStage
from providers.stages import Priority, Speech, SpeechToText, StageFailed, TextToSpeech

STT_RATE = 16000
CHUNK_BYTES = 2 * 1024 * 2  # 1024 samples a chunk, as Wyoming's own clients send


class WyomingServer(ModelServer):
    def __init__(self, name: str, cfg: ModelServerConfig, *, clock: Clock | None = None) -> None:
        super().__init__(name, cfg, clock=clock)
        u = urlparse(cfg.url)  # tcp://HOST:PORT: the config's validation made sure
        self.host, self.port = u.hostname or "", u.port or 0

    def client(self) -> AsyncTcpClient:
        return AsyncTcpClient(self.host, self.port)

    async def probe(self) -> None:
        async with self.client() as c:
            await c.write_event(Describe().event())
            while True:
                ev = await _read(c)
                if Info.is_type(ev.type):
                    return


async def _read(c: AsyncTcpClient) -> Event:
    ev = await c.read_event()
    if ev is None:
        raise StageFailed("the server closed the connection")
    if Error.is_type(ev.type):
        raise StageFailed(f"server error: {Error.from_event(ev).text}")
    return ev


class WyomingStt(ServerStage[WyomingServer], SpeechToText):
    async def transcribe(self, pcm16: bytes, prompt: str, priority: Priority = Priority.NOW) -> str:
        # ``prompt`` has no place in Wyoming's transcribe request: a Whisper server takes its
        # words to expect from its own --initial-prompt.
        s = self.server
        async with s.job():
            return await asyncio.wait_for(self._transcribe(pcm16), s.cfg.timeout_s)

    async def _transcribe(self, pcm16: bytes) -> str:
        async with self.server.client() as c:
            await c.write_event(Transcribe(name=self.server.cfg.model or None, language="en").event())
            await c.write_event(AudioStart(rate=STT_RATE, width=2, channels=1).event())
            for i in range(0, len(pcm16), CHUNK_BYTES):
                await c.write_event(AudioChunk(rate=STT_RATE, width=2, channels=1, audio=pcm16[i : i + CHUNK_BYTES]).event())
            await c.write_event(AudioStop().event())
            while True:
                ev = await _read(c)
                if Transcript.is_type(ev.type):
                    return Transcript.from_event(ev).text.strip()


class WyomingTts(ServerStage[WyomingServer], TextToSpeech):
    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        s = self.server
        async with s.job():
            return await asyncio.wait_for(self._synthesize(text), s.cfg.timeout_s)

    async def _synthesize(self, text: str) -> Speech:
        voice = SynthesizeVoice(name=self.server.cfg.voice) if self.server.cfg.voice else None
        async with self.server.client() as c:
            await c.write_event(Synthesize(text=text, voice=voice).event())
            rate, width, channels = 0, 2, 1
            audio = bytearray()
            while True:
                ev = await _read(c)
                if AudioStart.is_type(ev.type):
                    start = AudioStart.from_event(ev)
                    rate, width, channels = start.rate, start.width, start.channels
                elif AudioChunk.is_type(ev.type):
                    chunk = AudioChunk.from_event(ev)
                    rate, width, channels = chunk.rate, chunk.width, chunk.channels
                    audio += chunk.audio
                elif AudioStop.is_type(ev.type):
                    break
        if width != 2 or channels != 1 or not rate:
            raise StageFailed(f"{self.server.label}: audio of {width * 8} bits, {channels} channels at {rate} Hz (PCM16 mono wanted)")
        return Speech(bytes(audio), rate)
