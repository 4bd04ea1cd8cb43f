"""Demo callers for ``--sim``: a simulated caller every few seconds, speaking a real Asterisk prompt."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Callable

from pbxsim.server import Pause, Say, SimPBX, Step, WaitAgent, WaitAgentDone

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS = ["agent-pass", "hello-world", "demo-thanks", "auth-incorrect", "conf-getpin", "all-circuits-busy-now"]


async def demo_calls(pbx: SimPBX, app: str, interval_s: float, answering: Callable[[], bool]) -> None:
    """Places a call into ``app`` every ``interval_s`` while ``answering()`` says someone takes them:
    the caller hears the greeting, speaks, hears the answer and hangs up."""
    n = 0
    while True:
        prompt = SOUNDS / f"{random.choice(PROMPTS)}.wav"
        if prompt.exists() and answering():
            n += 1
            script: list[Step] = [WaitAgentDone(0.4, 8.0), Say(str(prompt)), WaitAgent(0.3, 15.0), WaitAgentDone(1.0, 20.0), Pause(1.0)]
            pbx.place_call(script=script, caller_number=f"555{n:04d}", app=app)
        await asyncio.sleep(interval_s)
