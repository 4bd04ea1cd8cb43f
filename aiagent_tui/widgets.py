"""The app's panes. Each renders from a CallSnapshot (or the engine's health) handed to it by the
app's 10 Hz refresh; none of them reaches into the engine."""

from __future__ import annotations

from collections import deque

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer, RichLog, Sparkline, Static
from textual.widgets._footer import FooterKey  # what Footer.compose yields (not exported by textual.widgets)

from engine import verdicts
from engine.sessions import ActionRecord, CallSnapshot, ConversationSnapshot, TranscriptTurn
from engine.status import EngineSummary

# A turn's parts, from the caller's last voiced frame: the wait for the end-of-speech decision
# (eos), then the provider's stages.
STAGES = (
    ("eos", "last_voice_in", "speech_end", "blue"),
    ("stt", "speech_end", "stt_final", "cyan"),
    ("llm", "stt_final", "first_sentence", "magenta"),
    ("tts", "first_sentence", "tts_first_audio", "yellow"),
    ("out", "tts_first_audio", "first_audio_out", "green"),
)
QUEUED_SHOWN_S = 0.05


def _kv(rows: list[tuple[str, str | Text]]) -> Table:
    t = Table.grid(padding=(0, 1))
    # The names stay whole; a value too long for the pane is cut instead.
    t.add_column(style="dim", no_wrap=True, min_width=max((len(k) for k, _ in rows), default=0))
    t.add_column(no_wrap=True)
    for k, v in rows:
        t.add_row(k, v)
    return t


class Pane(Static):
    """A fixed-size pane: new content never changes its size, so no layout pass is needed (a
    layout of the whole screen ten times a second is what stalls the shared event loop)."""

    def show_content(self, content) -> None:
        self.update(content, layout=False)


class HeaderBar(Pane):
    """Two lines that always say the same things: ARI, RTP and the providers; the call counters and
    where model work waits. What is wrong goes to the WarningBar under it, never over the counters."""

    compact = False  # a narrow terminal: the same facts, shorter (each line is cut, never wrapped)

    def show(self, s: EngineSummary, paused: bool = False) -> None:
        ari = Text("ARI ● connected", style="bold green") if s.ari_connected else Text("ARI ● down", style="bold red")
        rtp = Text(f"RTP {s.rtp_address.rsplit(':', 1)[-1] if self.compact else s.rtp_address}/udp", style="green" if s.rtp_server_running else "red")
        provs = Text()
        for name, p in s.providers.items():
            if p.detail == "not loaded" or (self.compact and p.ready):
                continue
            provs.append(f"{name}{'' if p.ready else ' (not ready)'} ", style="green" if p.ready else "red")
        to = Text(f"new calls → {s.default_provider}")
        if s.new_calls_provider != s.default_provider:  # the default is not ready: its fallback takes them
            to = Text.assemble("new calls → ", (f"{s.new_calls_provider} (fallback)", "bold yellow"))
        if self.compact:
            line1 = Text.assemble(ari, " │ ", to, " │ ", rtp, " │ " if provs else "", provs)
        else:
            line1 = Text.assemble(ari, "  │  ", rtp, "  │  providers: ", provs, "│  ", to)
        line2 = Text(f"calls {s.active_calls}/{s.max_calls}  ", style="dim")
        if s.model_capacity is not None:  # what this machine's models serve at once (engine/capacity.py)
            line2.append(f"model calls {s.model_calls}/{s.model_capacity}  ", style="yellow" if s.model_calls >= s.model_capacity else "dim")
        line2.append(f"total {s.calls_total}  refused {s.calls_rejected_over_capacity + s.calls_refused_model_capacity}")  # dim: the line's style
        if s.calls_refused_model_capacity:  # turned away because the models were at capacity
            line2.append(f" ({s.calls_refused_model_capacity} at model capacity)", style="yellow")
        line2.append("  ")
        line2.append(f"failed {s.calls_failed}", style="bold red" if s.calls_failed else "dim")
        if s.turns_failed:  # turns answered with the apology: the models refused or lost them
            line2.append(f"  turns failed {s.turns_failed}", style="bold red")
        line2.append("  │  " if self.compact else f"  │  {s.downstream_mode} playback  │  ", style="dim")
        busy = [q for q in s.model_queues if q.depth]
        if busy:  # model work queued: where the turns are waiting, instead of the URLs
            line2.append("models: ", style="dim")
            for q in busy:
                wait = q.oldest_wait_s
                line2.append(f"{q.model.removeprefix('local-').removesuffix('-worker')} {q.depth}" + (f" ({wait:.1f} s)" if wait >= 0.1 else "") + "  ",
                             style="bold red" if wait >= 2.0 else "yellow" if wait >= 0.5 else "")
        elif not self.compact:
            line2.append(f"health {s.health_url}  metrics {s.metrics_url}", style="dim")
        if paused:  # first: the operator must know the screen is not moving
            line1 = Text.assemble(("⏸ PAUSED (space resumes) ", "bold black on yellow"), line1)
        for line in (line1, line2):
            line.no_wrap, line.overflow = True, "ellipsis"  # two lines, whatever the width
        self.show_content(Group(line1, line2))


def warnings(s: EngineSummary) -> list[str]:
    """What the operator must fix, worst first: ARI down (no call can come in), then the engine's
    problems (a component or model worker down, a reload refused or waiting for a restart, model
    work waiting too long)."""
    down = [s.ari_last_error or "connecting to ARI"] if not s.ari_connected else []
    return down + list(s.problems)


class WarningBar(Static):
    """The warnings, one a line, under the header: shown only while there is one, so the screen
    lays out again only when their number changes (not at every 10 Hz tick)."""

    MAX_LINES = 3

    def show(self, lines: list[str]) -> None:
        if len(lines) > self.MAX_LINES:  # the rest are in /health and the log
            lines = lines[: self.MAX_LINES - 1] + [f"and {len(lines) - self.MAX_LINES + 1} more: see the log (L) or /health"]
        text = Text("\n".join(f"⚠ {line}" for line in lines), style="bold red", no_wrap=True, overflow="ellipsis")
        resized = len(lines) != self._shown_lines
        self._shown_lines = len(lines)
        self.set_class(bool(lines), "-shown")
        self.update(text, layout=resized)

    _shown_lines = 0


class LogPane(RichLog):
    """The live calls' log pane. RichLog keeps each line as wrapped when written: after a resize
    the old lines were too wide for a narrower pane (a scrollbar over its last line) and half
    empty in a wider one, unlike a fresh start at that size. Its lines wrap again instead."""

    KEPT = 500

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=True, markup=False, max_lines=self.KEPT, min_width=1)  # min_width: wrap however narrow
        self._texts: deque[Text] = deque(maxlen=self.KEPT)
        self._wrapped_at = 0

    def add(self, line: Text) -> None:
        self._texts.append(line)
        self.write(line)

    def on_resize(self, event: events.Resize) -> None:
        width = self.scrollable_content_region.width
        if self._wrapped_at and width != self._wrapped_at:
            self.clear()
            for line in self._texts:
                self.write(line)
        self._wrapped_at = width


class KeyFooter(Footer):
    """The live calls' footer: help and quit always, first, then the screen's keys in the order it
    declares them while they fit the width (? lists every key); compact (less space between the
    keys) when they do not all fit otherwise. Textual's footer would cut the line at the right
    edge, quit among what is cut."""

    ESSENTIAL = ("help", "quit")  # actions, without their namespace (app.help)

    def compose(self) -> ComposeResult:
        keys = [w for w in super().compose() if isinstance(w, FooterKey)]
        essential = [k for k in keys if k.action.rsplit(".", 1)[-1] in self.ESSENTIAL]
        rest = [k for k in keys if k not in essential]
        room = self.app.size.width
        self.compact = sum(self._cost(k, compact=False) for k in keys) > room
        if sum(self._cost(k) for k in keys) > room:  # not every key fits: help says where they are
            for k in essential:
                if k.action.endswith("help"):
                    k.description = "all keys"
        room -= sum(self._cost(k) for k in essential)
        shown: list[FooterKey] = []
        for k in rest:
            if self._cost(k) <= room:
                room -= self._cost(k)
                shown.append(k)
        yield from essential + shown

    def _cost(self, key: FooterKey, compact: bool | None = None) -> int:
        # FooterKey's own padding: compact "k desc" and a margin; otherwise " k desc "
        return len(key.key_display) + len(key.description) + (2 if (self.compact if compact is None else compact) else 3)

    def on_resize(self, event: events.Resize) -> None:
        self.refresh(recompose=True)


# How the panes and the list name each transport: (short, the media pane's title).
TRANSPORT_NAMES = {"rtp": ("rtp", "RTP / SSRC"), "audiosocket": ("asock", "AudioSocket"), "websocket": ("ws", "WebSocket media")}


def transport_short(name: str) -> str:
    return TRANSPORT_NAMES.get(name, (name[:5], name))[0]


def transport_title(name: str) -> str:
    return TRANSPORT_NAMES.get(name, (name, name))[1]


class RtpPane(Pane):
    """The call's media: RTP's stream (SSRC, loss, reordering), or on a stream transport
    (AudioSocket, WebSocket over TCP: nothing is lost or reordered there) its messages, gaps and
    arrival jitter. The title names the transport."""

    def show(self, c: CallSnapshot | None) -> None:
        if c is None:
            self.show_content(Text("no call selected", style="dim"))
            return
        title = transport_title(c.transport)
        if self.border_title != title:
            self.border_title = title
        r = c.rtp
        age = "—" if r.last_packet_age_s is None else f"{r.last_packet_age_s * 1000:.0f} ms"
        if c.transport != "rtp":
            width = self.content_size.width - len("last msg ") if self.content_size.width else 40
            self.show_content(_kv(stream_rows(c, age, width)))
            return
        self.show_content(
            _kv(
                [
                    ("SSRC", f"{r.ssrc:08x}" if r.ssrc is not None else "—"),
                    ("from", c.rtp_remote or "—"),
                    ("in", f"{r.packets_in} pkts"),
                    ("loss", _bad(f"{r.loss_pct:.2f} % ({r.lost}/{r.expected})", verdicts.LOSS_PCT.level(r.loss_pct))),
                    ("jitter", _bad(f"{r.jitter_ms:.2f} ms", verdicts.JITTER_MS.level(r.jitter_ms))),
                    ("reord/dup", f"{r.reordered} / {r.duplicates}"),
                    ("last pkt", _bad(age, verdicts.LAST_PACKET_S.level(r.last_packet_age_s or 0.0))),
                    ("out", f"{r.packets_out} pkts" + (", " + _bad(f"{r.outbound_underruns} dry", verdicts.UNDERRUNS.level(r.outbound_underruns))
                                                       if r.outbound_underruns else "")),
                    ("pacing", _bad(f"{r.pacing_error_ms:.1f} ms (max {r.max_pacing_error_ms:.1f})", verdicts.PACING_MS.level(r.max_pacing_error_ms))),
                ]
            )
        )


def _middle_cut(text: str, width: int) -> str:
    """A far end too long for the pane keeps both ends (a URL's host and its channel id)."""
    if len(text) <= width or width < 9:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def stream_rows(c: CallSnapshot, age: str, width: int = 40) -> list[tuple[str, str | Text]]:
    """A stream transport's media rows (the pane's title names the transport): what its counters
    mean on a connection that loses nothing and reorders nothing."""
    r = c.rtp
    return [
        ("from", Text(_middle_cut(c.media_remote, width) or "—")),  # an IPv6 address in brackets is not markup
        ("in", f"{r.packets_in} msgs" + (f", {r.malformed} bad" if r.malformed else "")),
        # Not coloured: a quiet caller's side that sends nothing pauses the stream as a stall does.
        ("gaps", f"{r.gaps} (max {r.max_gap_ms:.0f} ms)"),
        ("jitter", _bad(f"{r.jitter_ms:.2f} ms", verdicts.JITTER_MS.level(r.jitter_ms))),
        ("last msg", _bad(age, verdicts.LAST_PACKET_S.level(r.last_packet_age_s or 0.0))),
        ("out", f"{r.packets_out} msgs" + (", " + _bad(f"{r.outbound_underruns} dry", verdicts.UNDERRUNS.level(r.outbound_underruns))
                                           if r.outbound_underruns else "")),
        ("pacing", _bad(f"{r.pacing_error_ms:.1f} ms (max {r.max_pacing_error_ms:.1f})", verdicts.PACING_MS.level(r.max_pacing_error_ms))),
    ]


def _bad(text: str, level: verdicts.Level) -> str:
    """Coloured by engine/verdicts.py's level, as the history and ``calls diagnose`` judge the
    same figure: yellow past what a good line does, red past what a caller hears."""
    return text if level == "ok" else f"[{verdicts.STYLE[level]}]{text}[/]"


def level_text(v: ConversationSnapshot, width: int = 14) -> Text:
    filled = int(max(0.0, min(1.0, (v.level_dbfs + 70) / 70)) * width)
    bar = Text("█" * filled, style="green" if v.speaking else "blue")
    bar.append("░" * (width - filled), style="dim")
    return Text.assemble(bar, f" {v.level_dbfs:3.0f} dB ", ("SPEECH", "bold green") if v.speaking else ("quiet", "dim"))


class VadPane(Pane):
    def show(self, c: CallSnapshot | None) -> None:
        if c is None:
            self.show_content("")
            return
        self.show_content(level_text(c.conversation))


class LevelSparkline(Sparkline):
    def show(self, c: CallSnapshot | None) -> None:
        self.data = [max(0.0, lvl + 70) for lvl in c.conversation.levels] if c is not None and c.conversation.levels else []


class GatingPane(Pane):
    with_level = True  # the VAD pane is not shown (under 150 columns): the caller's level here

    def show(self, c: CallSnapshot | None) -> None:
        if c is None:
            self.show_content("")
            return
        v = c.conversation
        cap = "[b green]open[/]" if v.capture_enabled else "[b yellow]GATED[/]"
        self.show_content(
            _kv(
                [
                    ("call", f"{c.caller_number or 'unknown'} · {c.call_id[-8:]}"),
                    ("channel", c.channel or "—"),
                    ("profile", f"{c.profile} · dialled {c.dialled or '?'}"),
                    *([("level", level_text(v, 6))] if self.with_level else []),
                    ("provider", c.provider or "—"),
                    ("capture", cap),
                    ("state", v.state.replace("_", " ")),
                    ("playback", ", ".join(p[-12:] for p in v.playbacks) or "—"),
                    ("barge-ins", str(v.barge_ins)),
                    ("mode", v.downstream_mode),
                    *([("error", f"[red]{c.provider_error}[/]")] if c.provider_error else []),
                    *([("action", _action(c.actions[-1]))] if c.actions else []),
                ]
            )
        )


def _action(a: ActionRecord) -> str:
    colour = {"done": "green", "failed": "red", "refused": "red"}.get(a.state, "yellow")
    what = f"transfer → {a.department}" if a.kind == "transfer" else "hangup"
    return f"[{colour}]{what} ({a.by}): {a.state}[/]"


class TranscriptPane(Pane):
    def show(self, c: CallSnapshot | None, partial: str | None) -> None:
        if c is None:
            self.show_content("")
            return
        lines = Text()
        for t in c.transcript[-12:]:
            lines.append_text(_turn(t))
            lines.append("\n")
        if partial:
            lines.append(f"caller … {partial}\n", style="dim italic")
        if not lines.plain:
            self.show_content(Text("no words yet", style="dim"))
            return
        # The newest lines are the ones that matter (an operator who has the call reads what the
        # caller just said): as they wrap in this pane, the oldest go over its top, not the newest under it.
        width, height = self.content_size
        if width and height:
            lines.rstrip()
            rows = lines.wrap(self.app.console, width)
            if len(rows) > height:
                lines = Text("\n").join(rows[-height:])
        self.show_content(lines)


_ROLES = {"caller": Text("caller ", style="bold cyan"), "agent": Text("agent  ", style="bold magenta"), "note": Text("note   ", style="bold yellow")}


def _turn(t: TranscriptTurn) -> Text:
    """A line of the transcript; an operator's (a line they had the agent say, a note) names them."""
    return Text.assemble(_ROLES[t.role], t.text, (f"  [operator: {t.by}]" if t.by else "", "yellow"))  # as `calls show` marks it


class TimelinePane(Pane):
    def show(self, c: CallSnapshot | None) -> None:
        if c is None or not c.turns:
            self.show_content(Text("no turns yet", style="dim"))
            return
        out = Text()
        # 2 s (or the slowest turn) fills the pane beside "#N " and " NNNN ms", up to 30 cells.
        room = self.content_size.width - len("#5  10000 ms") if self.content_size.width else 30
        scale = max(5, min(30, room)) / max(2.0, max((t.latency_s or 0) for t in c.turns[-5:]))
        for i, t in enumerate(c.turns[-5:], 1):
            out.append(f"#{i} ")
            for _name, a, b, colour in STAGES:
                ta, tb = getattr(t, a), getattr(t, b)
                if ta is not None and tb is not None:
                    out.append("█" * max(1, int((tb - ta) * scale)), style=colour)
            total = t.latency_s
            out.append(f" {total * 1000:.0f} ms\n" if total is not None else " …\n")
            if t.queued_s is not None and t.queued_s >= QUEUED_SHOWN_S:  # behind other calls' model work
                out.append(f"   {t.queued_s * 1000:.0f} ms waiting for models\n", style="red")
        for n, (name, _a, _b, colour) in enumerate(STAGES):
            out.append(name + (" " if n < len(STAGES) - 1 else ""), style=colour)
        self.show_content(out)
