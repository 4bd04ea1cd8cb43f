"""People a call can bring in, and the ARI operations that reach them: originate (POST /channels)
and snoop channels (POST /channels/{id}/snoop), as Asterisk 22 does them (measured with Local
channels on the real one, pbxsim/asterisk_etc/extensions.conf's [people]):

- The originate answers 200 at once with the channel ``Down``; its events go to the app.
- No such extension (or context): ChannelDestroyed cause 0 "Unknown" at once, no Dial event, no
  ChannelHangupRequest.
- Busy: Dial "" then Dial BUSY, then ChannelDestroyed cause 0 (the busy cause shows only on the
  Local channel's other half).
- No answer: Dial "", ChannelStateChange Ringing, and when the originate's ``timeout`` runs out
  ChannelDestroyed cause 19 "User alerting, no answer".
- Answered: ChannelStateChange Up, Dial ANSWER, StasisStart with the appArgs.
- An endpoint of a technology the PBX does not have (PJSIP on the test build): 500 "Allocation failed".
- A snoop channel is Up in the reply, then StasisStart; when its channel ends it gets StasisEnd only.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Literal

from pbxsim.ari.channels import Channels
from pbxsim.ari.events import EventBus
from pbxsim.ari.model import EXTERNAL_MEDIA_APP, AriHttpError, AriRequest, ChannelTable, Handler, IdSource, Reply, SimChannel
from pbxsim.media import CallerMedia, MediaClock, SnoopMedia
from pbxsim.script import Pause, Say, Step

CAUSE_NO_ANSWER = 19
# What someone at an extension of the simulated dialplan (a transfer target) says when they answer.
ANSWER_PROMPT = Path("/usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.wav")


@dataclass(kw_only=True)
class SimPerson:
    """Someone a department's endpoint reaches: answers (after ``answer_after_s``, then follows
    ``script`` once put in a bridge), is busy, or never answers."""

    answers: Literal["answer", "busy", "no_answer"] = "answer"
    answer_after_s: float = 0.3
    script: list[Step] = field(default_factory=list)
    hang_up_after_script: bool = False  # else stays on the line until hung up
    # What happened, for the tests
    channel_id: str | None = None
    media: CallerMedia | None = None
    answered_at: float | None = None
    bridged_at: float | None = None
    ended_by: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


StepRunner = Callable[[SimChannel, CallerMedia, Step], Awaitable[None]]


class People:
    def __init__(
        self,
        *,
        table: ChannelTable,
        channels: Channels,
        events: EventBus,
        clock: MediaClock,
        ids: IdSource,
        run_step: StepRunner,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self.table = table
        self.channels = channels
        self.events = events
        self.clock = clock
        self.ids = ids
        self.run_step = run_step
        self.spawn = spawn
        # By the endpoint a department names: "Local/EXT@CONTEXT" or "TECH/resource".
        self.directory: dict[str, SimPerson] = {}
        self._local_seq = 0
        self._snoop_seq = 0

    def handlers(self) -> dict[str, Handler]:
        return {
            "channels.originate": lambda req: self.originate(req, req.query.get("channelId") or self.ids.new()),
            "channels.originateWithId": lambda req: self.originate(req, req.path["channelId"]),
            "channels.snoopChannel": lambda req: self.snoop(req, req.query.get("snoopId") or self.ids.new()),
            "channels.snoopChannelWithId": lambda req: self.snoop(req, req.path["snoopId"]),
        }

    # ---- originate
    def originate(self, req: AriRequest, cid: str) -> Reply:
        q = req.query
        if "app" not in q:
            raise AriHttpError(400, "the simulator originates into an app only (give app)")
        endpoint = q["endpoint"]
        tech, sep, resource = endpoint.partition("/")
        if not sep or not resource:
            raise AriHttpError(400, "Invalid endpoint specified")
        if cid in self.table.by_id:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        key = endpoint.removesuffix("/n")
        person = self.directory.get(key)
        exten, _, context = resource.removesuffix("/n").partition("@")
        if person is None and tech == "Local" and exten in self.channels.dialplan.get(context, set()):
            # An extension of the simulated dialplan: someone answers and speaks (a demo's departments).
            person = SimPerson(script=[Pause(1.0), Say(str(ANSWER_PROMPT))] if ANSWER_PROMPT.is_file() else [])
        if tech != "Local" and person is None:
            raise AriHttpError(500, "Allocation failed")  # no such channel technology on this PBX
        number, name = _caller_id(q.get("callerId", ""))
        media = CallerMedia()
        if tech == "Local":
            self._local_seq += 1
            chan_name = f"Local/{resource.removesuffix('/n')}-{self._local_seq:08x};1"
        else:
            chan_name = f"{endpoint}-{self._local_seq:08x}"
        ch = SimChannel(
            id=cid, name=chan_name, kind="person", media=media, state="Down", caller_number=number, caller_name=name, app=q["app"],
            app_args=[a for a in q.get("appArgs", "").split(",") if a], subscribed={q["app"]}, context=context or "default",
            exten=exten, dialplan_app=EXTERNAL_MEDIA_APP,
        )
        self.table.by_id[cid] = ch
        timeout = int(q.get("timeout", 30))
        self.spawn(self._dial(ch, media, person, timeout))
        return Reply(200, ch.to_json())

    async def _dial(self, ch: SimChannel, media: CallerMedia, person: SimPerson | None, timeout: int) -> None:
        await asyncio.sleep(0.001)
        if not self.table.live(ch):
            return
        if person is None:
            # No such extension: the Local channel's call fails at once.
            self.channels.hangup(ch, "dial", cause=0, request=False)
            return
        self._event(ch, {"type": "Dial", "dialstatus": "", "dialstring": ch.name, "peer": ch.to_json()})
        if person.answers == "busy":
            self._event(ch, {"type": "Dial", "dialstatus": "BUSY", "dialstring": ch.name, "peer": ch.to_json()})
            self.channels.hangup(ch, "dial", cause=0, request=False)
            return
        ch.state = "Ringing"
        self._event(ch, {"type": "ChannelStateChange", "channel": ch.to_json()})
        if person.answers == "no_answer" or person.answer_after_s >= timeout:
            await asyncio.sleep(timeout)
            self.channels.hangup(ch, "dial", cause=CAUSE_NO_ANSWER, request=False)
            return
        await asyncio.sleep(person.answer_after_s)
        if not self.table.live(ch):
            return
        ch.state = "Up"
        self._event(ch, {"type": "ChannelStateChange", "channel": ch.to_json()})
        self._event(ch, {"type": "Dial", "dialstatus": "ANSWER", "dialstring": ch.name, "peer": ch.to_json()})
        ch.in_stasis = True
        self.events.emit(ch.app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})
        person.channel_id, person.media, person.answered_at = ch.id, media, time.monotonic()
        person.ended_by, person.bridged_at = None, None
        person.finished.clear()
        await self._person(ch, media, person)

    async def _person(self, ch: SimChannel, media: CallerMedia, person: SimPerson) -> None:
        """The person talks once put into a bridge (theirs or a snoop's), then stays or hangs up."""
        try:
            while self.table.live(ch) and ch.bridge is None:
                await asyncio.sleep(0.01)
            if not self.table.live(ch):
                return
            person.bridged_at = time.monotonic()
            self.clock.callers.add(media)
            for step in person.script:
                if not self.table.live(ch):
                    break
                await self.run_step(ch, media, step)
            if person.hang_up_after_script and self.table.live(ch):
                person.ended_by = "person"
                self.channels.hangup(ch, "person")
            while self.table.live(ch):
                await asyncio.sleep(0.02)
        finally:
            person.ended_by = person.ended_by or "ari"
            person.finished.set()

    def _event(self, ch: SimChannel, event: dict[str, Any]) -> None:
        self.events.channel_event(ch, event)

    # ---- snoop
    def snoop(self, req: AriRequest, sid: str) -> Reply:
        q = req.query
        target = self.table.get(req.path["channelId"])
        spy, whisper = q.get("spy", "none"), q.get("whisper", "none")
        if spy == "none" and whisper == "none":
            raise AriHttpError(400, "Sniff direction or whisper direction is required")
        if sid in self.table.by_id:
            raise AriHttpError(409, "Channel with given unique ID already exists")
        if not isinstance(target.media, CallerMedia):
            raise AriHttpError(500, "Allocation failed")  # the simulator snoops on phones only
        media = SnoopMedia(target.media, spy, whisper)
        target.media.snoops.append(media)
        self._snoop_seq += 1
        ch = SimChannel(
            id=sid, name=f"Snoop/{target.id}-{self._snoop_seq - 1:08x}", kind="snoop", media=media, state="Up", app=q["app"],
            app_args=[a for a in q.get("appArgs", "").split(",") if a], context="default",
        )
        self.table.by_id[sid] = ch
        asyncio.get_running_loop().call_later(0.001, self._snoop_in_stasis, ch)
        return Reply(200, ch.to_json())

    def _snoop_in_stasis(self, ch: SimChannel) -> None:
        if self.table.live(ch):
            ch.in_stasis = True
            self.events.emit(ch.app, {"type": "StasisStart", "args": ch.app_args, "channel": ch.to_json()})


def _caller_id(text: str) -> tuple[str, str]:
    """``"Name" <number>`` -> (number, name)."""
    m = re.match(r'\s*"?([^"<]*)"?\s*<([^>]*)>', text)
    return (m.group(2).strip(), m.group(1).strip()) if m else (text.strip(), "")
