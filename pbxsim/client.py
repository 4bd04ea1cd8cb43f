"""Places simulated calls through a running simulator's /sim API and collects the report."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp


async def run_calls(
    sim_url: str,
    count: int,
    wav: str,
    hold_s: float,
    app: str = "aiagent",
    stagger_s: float = 0.05,
    settle_s: float = 3.0,
    converse: bool = False,
) -> dict[str, Any]:
    """Place ``count`` concurrent calls, wait for all of them to end, report what happened.
    ``converse``: each caller waits for the agent's greeting, speaks, and waits for the answer
    before holding; otherwise it speaks at once."""
    if converse:
        body: dict[str, Any] = {"script": [{"wait_agent_done": 0.4, "timeout_s": 10}, {"say": wav}, {"wait_agent": 0.2, "timeout_s": 20}, {"wait_agent_done": 1.0, "timeout_s": 30}, {"pause": hold_s}]}
    else:
        body = {"wav": wav, "hold_s": hold_s}
    sim_url = sim_url.rstrip("/")
    if sim_url.endswith("/ari"):
        sim_url = sim_url[:-4]
    async with aiohttp.ClientSession() as http:
        ids = []
        for i in range(count):
            async with http.post(f"{sim_url}/sim/calls", json={**body, "caller_number": f"{1000 + i}", "app": app}) as r:
                placed = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"simulator refused the call: {placed.get('error')}")
                ids.append(placed["id"])
            await asyncio.sleep(stagger_s)
        calls: dict[str, dict[str, Any]] = {}
        while True:
            for cid in ids:
                async with http.get(f"{sim_url}/sim/calls/{cid}") as r:
                    calls[cid] = await r.json()
            if all(c["done"] for c in calls.values()):
                break
            await asyncio.sleep(0.25)
        # Leftovers: what the engine has not deleted a while after the last call ended.
        deadline = time.monotonic() + settle_s
        while True:
            async with http.get(f"{sim_url}/sim/state") as r:
                state = await r.json()
            if (not state["leftover_channels"] and not state["leftover_bridges"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    return {
        "calls": [calls[c] for c in ids],
        "leftover_channels": len(state["leftover_channels"]),
        "leftover_bridges": len(state["leftover_bridges"]),
        "schema_violations": state["violations"],
    }
