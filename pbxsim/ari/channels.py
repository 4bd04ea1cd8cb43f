"""ARI channels: answer, hang up, leave Stasis (continue in the dialplan, redirect, move to another
app), variables, DTMF, play to one channel. Channels are made by the simulated callers
(pbxsim/callers.py) and by ExternalMedia (external_media.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

from pbxsim.ari.bridges import Bridges
from pbxsim.ari.events import EventBus
from pbxsim.ari.external_media import ExternalMedia
from pbxsim.ari.model import (
    CAUSE_APP_HANGUP,
    CAUSE_NORMAL,
    EXTERNAL_MEDIA_APP,
    NO_CONTENT,
    AriHttpError,
    AriRequest,
    CallObserver,
    ChannelTable,
    Handler,
    IdSource,
    Reply,
    SimChannel,
)
from pbxsim.ari.playbacks import Playbacks
from pbxsim.media import CallerMedia, ExternalMediaEndpoint, MediaClock, SnoopMedia

log = logging.getLogger("pbxsim")

# DELETE /channels/{id}?reason=... -> the Q.850 cause on ChannelDestroyed and HANGUPCAUSE.
HANGUP_CAUSES = {
    "normal": (16, "Normal Clearing"), "busy": (17, "User busy"), "congestion": (34, "Circuit/channel congestion"),
    "no_answer": (19, "No user responding"), "timeout": (18, "No user responding"), "rejected": (21, "Call Rejected"),
    "unallocated": (1, "Unallocated (unassigned) number"), "normal_unspecified": (31, "Normal, unspecified"),
    "number_incomplete": (28, "Invalid number format (addr incomplete)"), "codec_mismatch": (58, "Bearer capability not available"),
    "interworking": (127, "Interworking, unspecified"), "failure": (38, "Network out of order"),
    "answered_elsewhere": (26, "Answered elsewhere"),
}
# Causes whose text on ChannelDestroyed is not the one of the hangup reason with that code (measured:
# an originate that never rang shows 0 "Unknown", one the timeout ended 19 "User alerting, no answer").
CAUSE_TEXTS = {0: "Unknown", 19: "User alerting, no answer"}
# The simulated PBX's dialplan: context -> extensions that exist (a transfer into anything else is
# dropped by the PBX at once, as Asterisk does with an invalid extension).
DEFAULT_DIALPLAN: dict[str, set[str]] = {"from-internal": {"0", *(str(n) for n in range(100, 1000))}}


class Channels:
    def __init__(
        self,
        *,
        table: ChannelTable,
        events: EventBus,
        bridges: Bridges,
        playbacks: Playbacks,
        external: ExternalMedia,
        clock: MediaClock,
        ids: IdSource,
        calls: CallObserver,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self.table = table
        self.events = events
        self.bridges = bridges
        self.playbacks = playbacks
        self.external = external
        self.clock = clock
        self.ids = ids
        self.calls = calls
        self.spawn = spawn
        self.dialplan: dict[str, set[str]] = {k: set(v) for k, v in DEFAULT_DIALPLAN.items()}

    def handlers(self) -> dict[str, Handler]:
        return {
            "channels.list": lambda req: Reply(200, [c.to_json() for c in self.table.by_id.values()]),
            "channels.get": lambda req: Reply(200, self.table.get(req.path["channelId"]).to_json()),
            "channels.answer": self.answer,
            "channels.hangup": self.hangup_request,
            "channels.continueInDialplan": self.continue_in_dialplan,
            "channels.redirect": self.redirect,
            "channels.move": self.move,
            "channels.getChannelVar": self.get_var,
            "channels.setChannelVar": self.set_var,
            "channels.rtpstatistics": self.rtp_statistics,
            "channels.sendDTMF": self.send_dtmf,
            "channels.externalMedia": self.external.create,
            "channels.play": lambda req: self._play(req, req.query.get("playbackId") or self.ids.new()),
            "channels.playWithId": lambda req: self._play(req, req.path["playbackId"]),
        }

    def _in_stasis(self, req: AriRequest) -> SimChannel:
        ch = self.table.get(req.path["channelId"])
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        return ch

    def answer(self, req: AriRequest) -> Reply:
        ch = self._in_stasis(req)
        if ch.state != "Up":
            ch.state = "Up"
            self.calls.answered(ch)
            self.events.emit(ch.app, {"type": "ChannelStateChange", "channel": ch.to_json()})
        return NO_CONTENT

    def hangup_request(self, req: AriRequest) -> Reply:
        ch, q = self.table.get(req.path["channelId"]), req.query
        if "reason" in q and "reason_code" in q:
            raise AriHttpError(400, "The reason and reason_code can't both be specified")
        if "reason_code" in q:
            if not q["reason_code"].isdigit():
                raise AriHttpError(400, "Invalid reason for hangup reason code provided")
            cause = int(q["reason_code"])
        else:
            known = HANGUP_CAUSES.get(q.get("reason", "normal"))
            if known is None:
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
            cause = known[0]
        self.hangup(ch, by="ari", cause=cause)
        return NO_CONTENT

    def continue_in_dialplan(self, req: AriRequest) -> Reply:
        ch, q = self.table.get(req.path["channelId"]), req.query
        if "label" in q:
            # The simulated dialplan has no labels (BEHAVIOUR.md: an unknown one is a 404).
            raise AriHttpError(400 if q["label"] == "0" else 404, "Requested priority is illegal" if q["label"] == "0" else "Requested label can not be found")
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        target = (q.get("context") or ch.context, q.get("extension") or ch.exten, int(q.get("priority", 0) or 0))
        explicit = "context" in q or "extension" in q or "priority" in q
        if ch.bridge is not None:
            self.events.channel_event(ch, {"type": "ChannelVarset", "variable": "BRIDGEPEER", "value": "", "channel": ch.to_json()})
        self.bridges.leave(ch)
        ch.leave_stasis()
        ch.vars["STASISSTATUS"] = "SUCCESS"
        self.events.emit(ch.app, {"type": "StasisEnd", "channel": ch.to_json()})
        loop = asyncio.get_running_loop()
        if not explicit:
            # Resumes after Stasis(); the simulated dialplan has nothing there: the call ends.
            loop.call_later(0.05, self.hangup, ch, "dialplan")
            return NO_CONTENT
        # Asterisk's goto: one priority before the target's, the dialplan loop steps onto it.
        ch.context, ch.exten, ch.priority = target[0], target[1], (target[2] or 1) - 1
        where = f"{ch.exten}@{ch.context}"
        self.calls.left_stasis(ch, f"continue to {where}")
        if ch.exten in self.dialplan.get(ch.context, set()):
            # The target answers; the caller talks to it (the engine hears nothing more).
            loop.call_later(0.001, self._in_dialplan, ch, "Dial", f"Local/{where}")
            self.calls.transferred(ch, where)
        else:
            # Asterisk does not check the target: the PBX drops the caller at once.
            log.warning("channel %s sent to invalid extension %s", ch.id, where)
            loop.call_later(0.001, lambda: self.hangup(ch, "dialplan", invalid_extension=True))
        return NO_CONTENT

    def _in_dialplan(self, ch: SimChannel, app: str, data: str) -> None:
        if self.table.live(ch):
            ch.dialplan_app = (app, data)
            ch.priority += 1
            self.events.channel_event(ch, {"type": "ChannelDialplan", "dialplan_app": app, "dialplan_app_data": data, "channel": ch.to_json()})

    def redirect(self, req: AriRequest) -> Reply:
        ch = self.table.get(req.path["channelId"])
        endpoint = req.query["endpoint"]
        tech, sep, resource = endpoint.partition("/")
        if not sep:
            raise AriHttpError(422, f"Endpoint parameter '{endpoint}' does not contain tech/resource")
        if not resource:
            raise AriHttpError(422, "No resource provided in endpoint parameter")
        ch_tech = ch.name.split("/", 1)[0]
        if tech.lower() != ch_tech.lower():
            raise AriHttpError(422, f"Endpoint technology '{tech}' does not match channel technology '{ch_tech}'")
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        self.calls.left_stasis(ch, f"redirect to {endpoint}")
        if ch_tech == "Local":
            log.info("NOTICE: Unsupported transfer requested on %s", ch.name)  # nothing happens
            return NO_CONTENT
        # As an IAX2 caller measured: its far end transfers its party; the channel here ends.
        self.calls.transferred(ch, endpoint)
        asyncio.get_running_loop().call_later(0.006, self.hangup, ch, "transfer")
        return NO_CONTENT

    def move(self, req: AriRequest) -> Reply:
        ch, q = self._in_stasis(req), req.query
        args = [a for a in q.get("appArgs", "").split(",") if a]
        if not self.events.app_active(q["app"]):
            self.events.emit(ch.app, {"type": "ApplicationMoveFailed", "destination": q["app"], "args": args, "channel": ch.to_json()})
            return NO_CONTENT
        old = ch.app
        ch.leave_stasis()
        self.events.emit(old, {"type": "StasisEnd", "channel": ch.to_json()})
        # The caller stays in the old app's bridge until it is put elsewhere (BEHAVIOUR.md).
        ch.app, ch.app_args, ch.in_stasis = q["app"], args, True
        self.calls.left_stasis(ch, f"move to {q['app']}")
        self.events.emit(ch.app, {"type": "StasisStart", "args": args, "channel": ch.to_json()})
        return NO_CONTENT

    def get_var(self, req: AriRequest) -> Reply:
        ch = self.table.get(req.path["channelId"])
        name = req.query["variable"]
        if name.upper().startswith("TALK_DETECT("):
            raise AriHttpError(500, "Unable to read provided function")  # write-only (BEHAVIOUR.md)
        if name not in ch.vars:
            raise AriHttpError(404, "Provided variable was not found")
        return Reply(200, {"value": ch.vars[name]})

    def set_var(self, req: AriRequest) -> Reply:
        ch = self.table.get(req.path["channelId"])
        ch.vars[req.query["variable"]] = req.query.get("value", "")
        return NO_CONTENT

    def rtp_statistics(self, req: AriRequest) -> Reply:
        self.table.get(req.path["channelId"])
        raise AriHttpError(404, "RTP info not found")  # ExternalMedia has none (BEHAVIOUR.md)

    def send_dtmf(self, req: AriRequest) -> Reply:
        ch = self.table.get(req.path["channelId"])
        self.spawn(self.press_keys(ch, req.query.get("dtmf", ""), int(req.query.get("duration", 100))))
        return NO_CONTENT

    def _play(self, req: AriRequest, pid: str) -> Reply:
        return self.playbacks.play_on_channel(self.table.get(req.path["channelId"]), pid, req.query["media"])

    async def press_keys(self, ch: SimChannel, digits: str, duration_ms: int) -> None:
        """The caller presses keys: one ChannelDtmfReceived per digit, when it is released."""
        for d in digits:
            await asyncio.sleep(duration_ms / 1000)
            if not self.table.live(ch):
                return
            self.events.channel_event(ch, {"type": "ChannelDtmfReceived", "digit": d, "duration_ms": duration_ms, "channel": ch.to_json()})
            await asyncio.sleep(0.08)  # the gap between two key presses

    def hangup(self, ch: SimChannel, by: str, cause: int = CAUSE_NORMAL, invalid_extension: bool = False, request: bool = True) -> None:
        """``by``: "caller" (the far end), "ari" (an app's DELETE), "dialplan", "transfer",
        "person" (someone brought in hung up), "dial" (an originate that did not reach anyone),
        "snooped" (a snoop's channel ended). ``invalid_extension``: the PBX drops a channel sent where the
        dialplan has nothing. ``request``: False for a channel that ends
        with no ChannelHangupRequest (an originate that failed, a snoop whose channel went)."""
        if not self.table.live(ch):
            return
        # An app's hangup shows cause 32 with soft; the real cause comes on ChannelDestroyed.
        req_ev: dict[str, Any] = {"cause": CAUSE_APP_HANGUP, "soft": True} if by == "ari" else {"cause": cause}
        if invalid_extension:
            req_ev = {"cause": CAUSE_NORMAL, "soft": True}
        if request:
            self.events.channel_event(ch, {"type": "ChannelHangupRequest", **req_ev, "channel": ch.to_json()})
        self.bridges.leave(ch)
        if ch.in_stasis:
            ch.leave_stasis()
            self.events.emit(ch.app, {"type": "StasisEnd", "channel": ch.to_json()})
        if ch.kind == "external":
            ch.dialplan_app = EXTERNAL_MEDIA_APP
        if invalid_extension:
            ch.priority, ch.dialplan_app = ch.priority + 1, ("", "")
        self.playbacks.fail_on_channel(ch)
        del self.table.by_id[ch.id]
        ch.vars["HANGUPCAUSE"] = str(cause)
        # StasisEnd is the last event of a caller that entered Stasis from the dialplan, unless an
        # app subscribed to it (BEHAVIOUR.md).
        text = CAUSE_TEXTS.get(cause) or next((t for c, t in HANGUP_CAUSES.values() if c == cause), "Normal Clearing")
        if ch.kind != "snoop":  # a snoop's last event is its StasisEnd (measured)
            self.events.channel_event(ch, {"type": "ChannelDestroyed", "cause": cause, "cause_txt": text, "channel": ch.to_json()})
        if isinstance(ch.media, ExternalMediaEndpoint):
            self.external.release(ch.media)
        elif isinstance(ch.media, CallerMedia):
            self.clock.callers.discard(ch.media)
            # Snoops on this channel end with it.
            for other in list(self.table.by_id.values()):
                if isinstance(other.media, SnoopMedia) and other.media.target is ch.media:
                    self.hangup(other, "snooped", request=False)
        elif isinstance(ch.media, SnoopMedia) and ch.media in ch.media.target.snoops:
            ch.media.target.snoops.remove(ch.media)
        self.calls.destroyed(ch, by, cause)
