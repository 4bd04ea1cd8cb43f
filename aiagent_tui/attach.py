"""``aiagent-tui attach``: the terminal app on an engine that runs elsewhere in this machine (a
headless service, or another terminal app), over its console socket (engine/console.py).

The app draws from the same typed snapshots as with an engine of its own: an ``AttachedEngine``
fetches the view (the header, the call list, the selected call) a few times a second and feeds the
event stream (log lines, transcripts) into a store of its own. Quitting detaches; the engine and
its calls go on.

The operator's actions (whisper, take over, hand back, bring in) are posted to the engine, which
records them as done by this process's user ("NAME (attached)"). Listening in and taking over
open one audio WebSocket per call (an ``_AudioLink``): the call's audio comes to its taps (the
app's AudioMonitor, on this machine's sound device), the operator's microphone goes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from engine.api import AudioTap, AudioTaps, BringIn
from engine.console import CALLS, EVENTS, RELOAD, SNAPSHOT, SUMMARY, AudioFrame
from engine.sessions import CallSnapshot, CallSummary, SessionStore
from engine.status import EngineSummary, ReloadResult
from providers.base import Readiness

log = logging.getLogger(__name__)

POLL_S = 0.25
MIC_BACKLOG = 25  # the operator's 20 ms frames waiting for the socket: past this the oldest go


class AttachError(Exception):
    pass


class MirrorStore(SessionStore):
    """The engine's calls as last fetched; events as they come (published to the app's
    subscription like the engine's own store does)."""

    def __init__(self) -> None:
        super().__init__()
        self.wanted = ""  # the call the app shows in full: the next view fetches its snapshot
        self.calls: list[CallSummary] = []
        self.call: CallSnapshot | None = None

    def summaries(self) -> list[CallSummary]:
        return self.calls

    def snapshot(self, call_id: str) -> CallSnapshot | None:
        self.wanted = call_id
        return self.call if self.call is not None and self.call.call_id == call_id else None

    def snapshots(self) -> list[CallSnapshot]:
        return [self.call] if self.call is not None else []

    def __len__(self) -> int:
        return len(self.calls)


class _AudioLink:
    """One call's audio socket: the engine's frames to ``taps``, the operator's microphone to the
    engine. Ends when the engine closes it (the call ended: said in the log) or on ``close``."""

    def __init__(self, engine: AttachedEngine, call_id: str) -> None:
        self.engine = engine
        self.call_id = call_id
        self.taps = AudioTaps()
        self.mic: asyncio.Queue[bytes] = asyncio.Queue(MIC_BACKLOG)
        self.task = asyncio.create_task(self._run())

    def send(self, pcm16: bytes, rate: int) -> None:
        if self.mic.full():  # the socket is not keeping up: the operator's oldest audio goes
            self.mic.get_nowait()
        self.mic.put_nowait(AudioFrame("operator", rate, pcm16).encode())

    async def _run(self) -> None:
        why = "stopped"
        try:
            async with self.engine.http.ws_connect(f"/calls/{self.call_id}/audio", params={"side": "both"}, heartbeat=10.0) as ws:
                sender = asyncio.create_task(self._send(ws))
                try:
                    while True:
                        msg = await ws.receive()
                        if msg.type is aiohttp.WSMsgType.BINARY:
                            if self.taps:
                                frame = AudioFrame.decode(msg.data)
                                self.taps(frame.side, frame.pcm16, frame.rate)
                        elif msg.type is not aiohttp.WSMsgType.TEXT:
                            # The engine says why it closed (the call ended, it is stopping).
                            why = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE and msg.extra else f"the socket closed ({ws.close_code})"
                            break
                finally:
                    sender.cancel()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            why = f"{e.__class__.__name__}: {e}"
        finally:
            if self.engine._links.get(self.call_id) is self:
                del self.engine._links[self.call_id]
        self.engine.store.log(self.call_id, logging.INFO, f"the call's audio stopped: {why}")

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await ws.send_bytes(await self.mic.get())

    def close(self) -> None:
        self.task.cancel()


class AttachedEngine:
    """The EngineView of an engine behind its console socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = MirrorStore()
        self.fatal = asyncio.Event()  # set when the engine goes away: the app exits and says so
        self.fatal_error: str | None = None
        self._summary: EngineSummary | None = None
        self._departments: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._links: dict[str, _AudioLink] = {}  # call id -> its audio socket

    @property
    def default_provider(self) -> str:
        return self.summary().default_provider

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "connect() first"
        return self._http

    async def connect(self) -> None:
        """The first view, then the view and the events in tasks this object owns. Raises
        AttachError with what to do if no engine answers on the socket."""
        self._http = aiohttp.ClientSession(
            base_url="http://engine", connector=aiohttp.UnixConnector(path=str(self.path)), timeout=aiohttp.ClientTimeout(total=5)
        )
        try:
            await self._fetch_view()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            await self.close()
            raise AttachError(
                f"no engine answers on {self.path} ({e}); is it running (systemctl status aiagent-tui@NAME), "
                "and is this its user (or root)? --socket names another socket"
            ) from e
        self._tasks = [asyncio.create_task(self._owned(self._poll(), "view")), asyncio.create_task(self._owned(self._follow(), "events"))]

    async def close(self) -> None:
        links = [link.task for link in self._links.values()]
        for link in list(self._links.values()):
            link.close()
        await asyncio.gather(*links, return_exceptions=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _owned(self, work: Any, what: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the engine went away, or answered what this console cannot read
            self._lost(f"{what}: {e.__class__.__name__}: {e}")

    def _lost(self, why: str) -> None:
        if self.fatal_error is None:
            self.fatal_error = f"lost the engine on {self.path}: {why}"
            log.error("%s", self.fatal_error)
        self.fatal.set()

    async def _fetch_view(self) -> None:
        async with self.http.get("/view", params={"call": self.store.wanted}) as r:
            r.raise_for_status()
            body = json.loads(await r.read())
        self._summary = SUMMARY.validate_python(body["summary"])
        self.store.calls = CALLS.validate_python(body["calls"])
        self.store.call = SNAPSHOT.validate_python(body["call"])
        self._departments = body["departments"]

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._fetch_view()

    async def _follow(self) -> None:
        async with self.http.ws_connect("/events", heartbeat=10.0, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)
                adapter = EVENTS.get(data.get("type", ""))
                if adapter is not None:  # an event of a newer engine: not shown
                    self.store.publish(adapter.validate_python(data["event"]))
        self._lost("the engine closed the event stream")

    # ---- EngineView
    def summary(self) -> EngineSummary:
        assert self._summary is not None, "connect() first"
        return self._summary

    def provider_readiness(self) -> dict[str, Readiness]:
        return dict(self.summary().providers)

    def departments(self, call_id: str) -> dict[str, str]:
        return dict(self._departments) if call_id == self.store.wanted else {}

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> bool:
        try:
            async with self.http.post(path, json=body or {}) as r:
                reply = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            self.store.log(None, logging.ERROR, f"console: {path} failed: {e}")
            return False
        if not reply.get("ok"):
            self.store.log(None, logging.WARNING, f"console: {path} refused: {reply.get('error', 'the engine said no')}")
        return bool(reply.get("ok"))

    def _post_later(self, path: str, body: dict[str, Any] | None = None) -> bool:
        """For the view's synchronous commands: sent now, its outcome in the log."""
        task = asyncio.create_task(self._post(path, body))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
        return True

    # ---- the operator in the loop: ``by`` is the engine's to say (this socket's user, "NAME (attached)")
    def operator_say(self, call_id: str, text: str, by: str) -> bool:
        return self._post_later(f"/calls/{call_id}/say", {"text": text})

    def operator_instruct(self, call_id: str, text: str, by: str) -> bool:
        return self._post_later(f"/calls/{call_id}/instruct", {"text": text})

    def take_over(self, call_id: str, by: str) -> bool:
        return self._post_later(f"/calls/{call_id}/take-over")

    def hand_back(self, call_id: str, by: str) -> bool:
        return self._post_later(f"/calls/{call_id}/hand-back")

    def operator_audio(self, call_id: str, pcm16: bytes, rate: int) -> None:
        self._link(call_id).send(pcm16, rate)

    def bring_in(self, call_id: str, department: str, how: BringIn, by: str) -> bool:
        return self._post_later(f"/calls/{call_id}/bring-in", {"department": department, "how": how})

    def _link(self, call_id: str) -> _AudioLink:
        link = self._links.get(call_id)
        if link is None:
            link = self._links[call_id] = _AudioLink(self, call_id)
        return link

    def barge_in(self, call_id: str) -> bool:
        return self._post_later(f"/calls/{call_id}/barge-in")

    async def hangup(self, call_id: str) -> bool:
        return await self._post(f"/calls/{call_id}/hangup")

    def transfer(self, call_id: str, department: str) -> bool:
        return self._post_later(f"/calls/{call_id}/transfer", {"department": department})

    async def set_default_provider(self, name: str) -> None:
        await self._post("/provider", {"name": name, "call": None})

    async def set_call_provider(self, call_id: str, name: str) -> bool:
        return await self._post("/provider", {"name": name, "call": call_id})

    def set_audio_tap(self, call_id: str, tap: AudioTap | None, *, key: str) -> bool:
        """The call's audio over its own socket (the engine closes it when the call ends), closed
        when its last listener stops."""
        if tap is None:
            if (link := self._links.get(call_id)) is not None:
                link.taps.set(key, None)
                if not link.taps:
                    del self._links[call_id]
                    link.close()
            return True
        if not any(c.call_id == call_id for c in self.store.calls):
            return False
        self._link(call_id).taps.set(key, tap)
        return True

    async def reload(self) -> ReloadResult:
        """The engine reads its config file again (its own file and environment)."""
        try:
            async with self.http.post("/reload") as r:
                return RELOAD.validate_json(await r.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            return ReloadResult(at=time.time(), applied=(), restart=(), failed=(f"could not ask the engine: {e}",))


class AttachRuntime:
    """The app's runtime when attached: connects, and detaches on quit (no call is touched)."""

    ends_calls = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine: AttachedEngine | None = None

    async def start(self) -> AttachedEngine:
        engine = AttachedEngine(self.path)
        await engine.connect()
        self.engine = engine
        return engine

    async def stop(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.close()

    async def reload(self) -> ReloadResult:
        if self.engine is None:
            raise RuntimeError("not attached")
        return await self.engine.reload()

    def describe(self) -> str:
        return f"attached to the engine on {self.path}"
