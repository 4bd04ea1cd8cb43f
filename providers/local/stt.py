"""Speech to text behind one interface. ``transcribe`` blocks: call it from a ModelWorker."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from providers.config import LocalProviderConfig
from providers.local.models import VOSK, WHISPER_TINY_EN, resolve

SAMPLE_RATE = 16000
NO_SPEECH = 0.6  # Whisper's own no-speech threshold
VOCABULARY_AS = "initial_prompt"  # or "hotwords" (faster-whisper); chosen by bench/stt_wer.py --profiles


class SttModel(ABC):
    """A speech-to-text model in this process (the worker's side); the pipeline's async stage is
    ``providers.stages.SpeechToText``."""

    name: str

    @abstractmethod
    def transcribe(self, pcm16: bytes, vocabulary: str = "", cancelled: threading.Event | None = None) -> str:
        """Text of 16 kHz mono PCM16 speech ('' for none); ``vocabulary``: words to expect (the
        profile's names, streets, products), for the engines that can use them. Once
        ``cancelled`` is set nobody wants the text: an engine that can stop part-way returns ''."""


FULL_WINDOW = 3000  # Whisper's encoder window in feature frames: 30 s
FRAMES_PER_S = 100
WINDOW_MARGIN = 100  # frames of the window past the audio's end: 1 s


def encoder_window(samples: int, min_window_s: float) -> int:
    """Feature frames the encoder reads for ``samples`` of 16 kHz audio: the audio and a second
    more, at least ``min_window_s``, at most Whisper's 30 s."""
    content = samples // (SAMPLE_RATE // FRAMES_PER_S) + 1
    return min(FULL_WINDOW, max(round(min_window_s * FRAMES_PER_S), content + WINDOW_MARGIN))


class _Cancelled(Exception):
    pass


class WhisperStt(SttModel):
    """faster-whisper (CTranslate2). Not streaming: the provider transcribes the utterance at the
    caller's pauses, so that little is left to do at the end."""

    name = "whisper"

    def __init__(self, model_dir: Path, threads: int, compute_type: str, beam_size: int, min_window_s: float = 30.0) -> None:
        from faster_whisper import WhisperModel

        class WindowedWhisper(WhisperModel):
            """faster-whisper pads every segment to Whisper's 30 s window, and the encoder's cost
            is the window's (0.35 s with tiny.en on 2 threads, for a 2 s question). CTranslate2
            takes a shorter window: cut the padding back to ``window`` frames. A pass can be
            stopped only around the encoder (CTranslate2's generate cannot be interrupted): a
            pass cancelled before the encoder or during it skips the decoding, about 45 % of a
            short question's pass (a pause's transcript that the caller's next words make stale
            is cancelled 20-80 ms into its pass, while the encoder runs)."""

            window = FULL_WINDOW
            cancelled: threading.Event | None = None

            def encode(self, features: np.ndarray):  # type: ignore[no-untyped-def]
                if self.cancelled is not None and self.cancelled.is_set():
                    raise _Cancelled
                out = super().encode(features[..., : self.window])
                if self.cancelled is not None and self.cancelled.is_set():
                    raise _Cancelled
                return out

        # local_files_only: a path, never a hub download.
        self.model = WindowedWhisper(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads, local_files_only=True)
        self.beam_size = beam_size
        self.min_window_s = min_window_s

    def transcribe(self, pcm16: bytes, vocabulary: str = "", cancelled: threading.Event | None = None) -> str:
        audio = np.frombuffer(pcm16, dtype=np.int16).astype(np.float32) / 32768.0
        self.model.window = encoder_window(len(audio), self.min_window_s)  # type: ignore[attr-defined]
        self.model.cancelled = cancelled  # type: ignore[attr-defined]
        # Timestamps on: without them the tiny model stops after the first sentence of a long
        # utterance (measured on Asterisk's 25 s IVR prompt). The vocabulary goes in as Whisper's
        # initial prompt (bench/stt_wer.py --profiles measures it against hotwords and nothing).
        segments, _ = self.model.transcribe(
            audio, language="en", beam_size=self.beam_size, condition_on_previous_text=False,
            **{VOCABULARY_AS: vocabulary or None},
        )
        # Whisper turns faint noise into "Thank you." or "That's it.": what it rates as no
        # speech itself is not the caller's words.
        try:
            return " ".join(s.text.strip() for s in segments if s.no_speech_prob < NO_SPEECH).strip()
        except _Cancelled:
            return ""


class PocketsphinxStt(SttModel):
    """CMU pocketsphinx with the English model its package ships: light, but far less accurate."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, pcm16: bytes, vocabulary: str = "", cancelled: threading.Event | None = None) -> str:
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm16, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


class VoskStt(SttModel):
    name = "vosk"

    def __init__(self, model_dir: Path) -> None:
        try:
            from vosk import KaldiRecognizer, Model, SetLogLevel
        except ImportError as e:
            raise RuntimeError("providers.local.stt_engine = 'vosk' needs the vosk package: pip install vosk") from e
        SetLogLevel(-1)
        self._model = Model(str(model_dir))
        self._recognizer = KaldiRecognizer

    def transcribe(self, pcm16: bytes, vocabulary: str = "", cancelled: threading.Event | None = None) -> str:
        import json

        rec = self._recognizer(self._model, SAMPLE_RATE)
        rec.AcceptWaveform(pcm16)
        return str(json.loads(rec.FinalResult()).get("text", "")).strip()


def build_stt(cfg: LocalProviderConfig) -> SttModel:
    """Resolves the model path (a clear ModelNotFound if it is not there) and loads the model."""
    if cfg.stt_engine == "whisper":
        return WhisperStt(
            resolve(WHISPER_TINY_EN, cfg.stt_model_path), cfg.stt_threads, cfg.stt_compute_type, cfg.stt_beam_size, cfg.stt_window_s
        )
    if cfg.stt_engine == "pocketsphinx":
        return PocketsphinxStt()
    return VoskStt(resolve(VOSK, cfg.stt_model_path))


def check_stt_model(cfg: LocalProviderConfig) -> None:
    """Only the path checks of build_stt: cheap, for startup and doctor."""
    if cfg.stt_engine == "whisper":
        resolve(WHISPER_TINY_EN, cfg.stt_model_path)
    elif cfg.stt_engine == "vosk":
        resolve(VOSK, cfg.stt_model_path)
