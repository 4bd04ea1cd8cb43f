"""ARI playbacks: files played to one channel (heard by its caller only) or to a bridge (mixed by
pbxsim.media.Bridge), and /playbacks/{id} to read, stop and control them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Coroutine

from media.frames import FRAME_S

from pbxsim.ari.events import EventBus
from pbxsim.ari.model import NO_CONTENT, AriHttpError, AriRequest, BridgeTable, ChannelTable, Handler, Reply, SimChannel
from pbxsim.media import Bridge, CallerMedia, MediaClock, Playback, load_playback_frames


def playback_json(pb: Playback) -> dict[str, Any]:
    return {"id": pb.id, "media_uri": pb.media_uri, "target_uri": pb.target_uri, "language": "en", "state": pb.state}


class Playbacks:
    def __init__(
        self,
        *,
        channels: ChannelTable,
        bridges: BridgeTable,
        events: EventBus,
        clock: MediaClock,
        sounds_dirs: list[Path],
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self.channels = channels
        self.bridges = bridges
        self.events = events
        self.clock = clock
        self.sounds_dirs = sounds_dirs
        self.spawn = spawn
        self.active: dict[str, tuple[Playback, Bridge | SimChannel]] = {}  # until PlaybackFinished

    def handlers(self) -> dict[str, Handler]:
        return {"playbacks.get": self.get, "playbacks.stop": self.stop, "playbacks.control": self.control}

    def _entry(self, req: AriRequest) -> tuple[Playback, Bridge | SimChannel]:
        entry = self.active.get(req.path["playbackId"])
        if entry is None:
            raise AriHttpError(404, "Playback not found")
        return entry

    def get(self, req: AriRequest) -> Reply:
        return Reply(200, playback_json(self._entry(req)[0]))

    def stop(self, req: AriRequest) -> Reply:
        pb, target = self._entry(req)
        if isinstance(target, Bridge):
            if not target.stop_playback(pb):
                pb.state = "done"
                self.event(pb, "finished")
        else:
            pb.state = "done"  # the channel playback task sees this within one frame
            self.event(pb, "finished")
        return NO_CONTENT

    def control(self, req: AriRequest) -> Reply:
        # Asterisk's state table (res_stasis_playback.c): a queued playback takes only restart (a
        # no-op); pausing publishes state "paused" with no event; unpausing publishes "playing",
        # which ARI sends as a second PlaybackStarted. Anything else in a state that lacks it: 409.
        pb, op = self._entry(req)[0], req.query["operation"]
        if pb.state == "queued" and op == "restart":
            return NO_CONTENT
        if pb.state == "playing" and op in ("restart", "reverse", "forward") and pb.frames is not None:
            pb.seek(op)
            return NO_CONTENT
        if pb.state == "playing" and op in ("pause", "unpause"):
            if op == "pause":
                pb.state = "paused"  # the mixer's next tick plays nothing of it
            return NO_CONTENT
        if pb.state == "paused" and op in ("pause", "unpause"):
            if op == "unpause":
                pb.state = "playing"
                self.event(pb, "started")
            return NO_CONTENT
        raise AriHttpError(409, "Playback not in a state to accept this operation")

    # ---- started by the channels and bridges resources
    def _make(self, pid: str, media_uri: str, target: str) -> Playback:
        uri = media_uri.split(",")[0]
        frames, never = load_playback_frames(uri, self.sounds_dirs)
        return Playback(id=pid, media_uri=uri, target_uri=target, frames=frames, never_finishes=never, loops=uri.startswith("tone:"))

    def play_on_channel(self, ch: SimChannel, pid: str, media_uri: str) -> Reply:
        if not ch.in_stasis:
            raise AriHttpError(409, "Channel not in Stasis application")
        pb = self._make(pid, media_uri, f"channel:{ch.id}")
        ch.channel_playbacks.append(pb)
        self.active[pid] = (pb, ch)
        self.spawn(self._run_on_channel(ch, pb))
        return Reply(201, playback_json(pb))

    def play_on_bridge(self, b: Bridge, pid: str, media_uri: str) -> Reply:
        # Asterisk accepts a duplicate id while the first still plays (BEHAVIOUR.md); so do we.
        pb = self._make(pid, media_uri, f"bridge:{b.id}")
        b.playbacks.append(pb)
        self.active[pid] = (pb, b)
        return Reply(201, playback_json(pb))

    async def _run_on_channel(self, ch: SimChannel, pb: Playback) -> None:
        # Heard by the caller only, never mixed into ExternalMedia; mutes the caller on the bridge.
        media = ch.media
        if pb.frames is None:
            # Started, then at once failed (a missing file); an unknown scheme never finishes.
            pb.state = "playing"
            self.event(pb, "started")
            if not pb.never_finishes:
                pb.state = "failed"
                self.event(pb, "finished")
            return
        pb.state = "playing"
        self.event(pb, "started")
        if isinstance(media, CallerMedia):
            media.muted = True
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            held = 0  # frames of pause, which push the rest of the file later
            while pb.state in ("playing", "paused"):
                if pb.state == "paused":
                    held += 1
                else:
                    f = pb.next_frame()
                    if f is None:
                        break
                    media.deliver(f, not pb.loops, self.clock.tick)  # a tone (ringback) is not the agent's voice
                await asyncio.sleep(max(0.0, t0 + (pb.pos + held) * FRAME_S - loop.time()))
        finally:
            if isinstance(media, CallerMedia):
                media.muted = False
            if pb.state == "playing":
                pb.state = "done"
                self.event(pb, "finished")

    def fail_on_channel(self, ch: SimChannel) -> None:
        """The channel is gone: what still plays on it ends, failed."""
        for pb in ch.channel_playbacks:
            if pb.state in ("playing", "paused"):
                pb.state = "failed"
                self.event(pb, "finished")

    def fail_on_bridge(self, b: Bridge) -> None:
        """The bridge is gone, or has only its announcer left to play to: its playbacks end, failed."""
        for pb in list(b.playbacks):
            b.playbacks.remove(pb)
            pb.state = "failed"
            self.event(pb, "finished")

    def event(self, pb: Playback, what: str) -> None:
        """PlaybackStarted or PlaybackFinished (``what``: "started", "finished") to the target's app."""
        kind, _, target = pb.target_uri.partition(":")
        if kind == "bridge":
            app = self.bridges.app.get(target)
        else:
            ch = self.channels.by_id.get(target)
            app = ch.app if ch is not None else None
        self.events.emit(app, {"type": "PlaybackStarted" if what == "started" else "PlaybackFinished", "playback": playback_json(pb)})
        if what == "finished":
            self.active.pop(pb.id, None)
