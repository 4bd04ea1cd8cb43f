"""A simulated caller's script (say a WAV or synthesized text, pause, wait for the agent, press
keys) and its phone line; shared by the simulator's callers and the real PBX's (pbxsim/asterisk.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from media.audio import audioop

from pbxsim.media import heard_s
from pbxsim.voice import speak


@dataclass(frozen=True)
class Say:
    wav: str


@dataclass(frozen=True)
class SayText:
    """Say ``text`` in a synthesized human voice (Piper; pbxsim/voice.py), ``gain_db`` louder
    (negative: a voice in the background, or crosstalk on the line)."""

    text: str
    gain_db: float = 0.0


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class WaitAgent:
    """Wait until the caller has heard ``seconds`` of agent audio since the last step (timeout: give up)."""

    seconds: float
    timeout_s: float = 15.0


@dataclass(frozen=True)
class WaitAgentDone:
    """Wait until the agent has spoken and then been quiet for ``quiet_s``."""

    quiet_s: float = 0.5
    timeout_s: float = 15.0


@dataclass(frozen=True)
class Dtmf:
    """Press keys: each ``digits`` key held ``duration_ms`` (the event comes when it is released)."""

    digits: str
    duration_ms: int = 120


Step = Say | SayText | Pause | WaitAgent | WaitAgentDone | Dtmf


@dataclass(frozen=True)
class Line:
    """The caller's phone line: ``noise_dbfs`` set means the phone sends line noise at that level all
    the time (as most phones do); None means it sends nothing in silence (DTX, Local channels).
    ``rate`` 16000 is a wideband phone (slin16)."""

    noise_dbfs: float | None = None
    rate: int = 8000


def parse_script(items: list[dict[str, Any]]) -> list[Step]:
    steps: list[Step] = []
    for it in items:
        if "say" in it:
            steps.append(Say(str(it["say"])))
        elif "say_text" in it:
            steps.append(SayText(str(it["say_text"]), float(it.get("gain_db", 0.0))))
        elif "pause" in it:
            steps.append(Pause(float(it["pause"])))
        elif "wait_agent" in it:
            steps.append(WaitAgent(float(it["wait_agent"]), float(it.get("timeout_s", 15.0))))
        elif "dtmf" in it:
            steps.append(Dtmf(str(it["dtmf"]), int(it.get("duration_ms", 120))))
        elif "wait_agent_done" in it:
            steps.append(WaitAgentDone(float(it["wait_agent_done"]), float(it.get("timeout_s", 15.0))))
        else:
            raise ValueError(f"unknown script step {it!r}")
    return steps


async def spoken(step: Say | SayText, load: Callable[[str], bytes]) -> bytes:
    """What a Say or SayText step says, as 8 kHz u-law (``load`` reads a WAV)."""
    if isinstance(step, Say):
        return load(step.wav)
    speech = await asyncio.to_thread(speak, step.text)
    if step.gain_db:
        speech = audioop.lin2ulaw(audioop.mul(audioop.ulaw2lin(speech, 2), 2, 10 ** (step.gain_db / 20)), 2)
    return speech


async def wait_step(step: Pause | WaitAgent | WaitAgentDone, alive: Callable[[], bool], agent_frames: list[tuple[float, bytes]]) -> None:
    """A caller's pause or wait for the agent, on what it hears (``agent_frames``: arrival time,
    audio); over when the call is (``alive`` false)."""
    since = time.monotonic()
    if isinstance(step, Pause):
        end = since + step.seconds
        while alive() and time.monotonic() < end:
            await asyncio.sleep(0.01)
    elif isinstance(step, WaitAgent):
        end = since + step.timeout_s
        while alive() and time.monotonic() < end and heard_s(agent_frames, since) < step.seconds:
            await asyncio.sleep(0.01)
    else:
        end = since + step.timeout_s
        while alive() and time.monotonic() < end:
            heard = agent_frames and agent_frames[-1][0] >= since
            if heard and time.monotonic() - agent_frames[-1][0] >= step.quiet_s:
                break
            await asyncio.sleep(0.01)
