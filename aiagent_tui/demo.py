"""Demo calls for --sim: a simulated caller every few seconds, speaking a real Asterisk prompt."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from engine.config import AppConfig
from engine.engine import Engine, EngineStartError

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS = ["agent-pass", "hello-world", "demo-thanks", "auth-incorrect", "conf-getpin", "all-circuits-busy-now"]


async def start_simulator(config: AppConfig):
    """The simulated PBX for --sim, on the port the engine's ARI settings point at."""
    from pbxsim.server import SimPBX

    pbx = SimPBX(username=config.asterisk.ari_username, password=config.asterisk.ari_password.get_secret_value())
    try:
        await pbx.start(host=config.asterisk.host, port=config.asterisk.ari_port)
    except OSError as e:
        await pbx.stop()
        raise EngineStartError(
            f"cannot start the simulated PBX on {config.asterisk.host}:{config.asterisk.ari_port}/tcp: {e.strerror or e} "
            "(is Asterisk running there?); set asterisk.ari_port (ASTERISK_ARI_PORT) to a free port"
        ) from None
    return pbx


async def demo_calls(pbx, engine: Engine, app: str, interval_s: float) -> None:
    from pbxsim.server import Pause, Say, WaitAgent, WaitAgentDone

    n = 0
    while True:
        prompt = SOUNDS / f"{random.choice(PROMPTS)}.wav"
        if prompt.exists() and engine.ari_connected:
            n += 1
            # Hear the greeting, speak, hear the answer, hang up.
            script = [WaitAgentDone(0.4, 8.0), Say(str(prompt)), WaitAgent(0.3, 15.0), WaitAgentDone(1.0, 20.0), Pause(1.0)]
            pbx.place_call(script=script, caller_number=f"555{n:04d}", app=app)
        await asyncio.sleep(interval_s)
