"""Demo callers for ``--sim``: a simulated caller every few seconds, asking something in a human
voice (or speaking a real Asterisk prompt), then saying goodbye, hanging up, or pressing 0."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Callable

from pbxsim.script import Dtmf, Pause, Say, SayText, Step, WaitAgent, WaitAgentDone
from pbxsim.server import SimPBX

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS = ["agent-pass", "hello-world", "demo-thanks", "auth-incorrect", "conf-getpin", "all-circuits-busy-now"]
QUESTIONS = [
    "Hi, what time do you open on Saturday?",
    "Hello, where are you located?",
    "How much does a first appointment cost?",
    "Can I speak to a real person, please?",
    "Do you take credit cards?",
]
ENDINGS: list[list[Step]] = [
    [SayText("Great, thank you. Goodbye!"), WaitAgentDone(1.0, 10.0), Pause(2.0)],  # the agent hangs up
    [Pause(1.0)],  # the caller hangs up
    [Dtmf("0"), Pause(4.0)],  # to the operator, if the profile has one
]


def demo_script() -> list[Step]:
    prompt = SOUNDS / f"{random.choice(PROMPTS)}.wav"
    ask: Step = SayText(random.choice(QUESTIONS)) if random.random() < 0.7 or not prompt.exists() else Say(str(prompt))
    return [WaitAgentDone(0.4, 8.0), ask, WaitAgent(0.3, 15.0), WaitAgentDone(1.0, 20.0), *random.choice(ENDINGS)]


async def demo_calls(pbx: SimPBX, app: str, interval_s: float, answering: Callable[[], bool]) -> None:
    """Places a call into ``app`` every ``interval_s`` while ``answering()`` says someone takes them:
    the caller hears the greeting, speaks, hears the answer and ends the call one way or another."""
    n = 0
    while True:
        # The engine connects to ARI a moment after it starts (or lost it): the next call as soon
        # as it answers again, not a whole interval later (the first call came 8 s after start).
        while not answering():
            await asyncio.sleep(0.1)
        n += 1
        pbx.place_call(script=demo_script(), caller_number=f"555{n:04d}", app=app, dialled="100")
        await asyncio.sleep(interval_s)
