"""The chat app: a conversation view, a prompt, a live status bar and the modal screens.

Workers do the engine work in threads (tui.backend) and report only through messages
(tui.events); handlers here update widgets and the `Conversation`. Errors a user can cause or
meet (no model, context full, bad file) arrive as messages too and are shown in the app.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Footer, Label, ProgressBar, Static

from svip_local import GenerationStats, SvipError
from svip_local.chat import ChatTemplate, device_summary
from svip_local.conversation import Conversation, SavedConversation, list_saved
from svip_local.registry import human_size, load_registry, status

if TYPE_CHECKING:
    from svip_local import Engine, Plan

from tui.attach import AttachError, expand, has_attachments
from tui.backend import EngineSlot, ReplyJob, load_engine, reply_and_time
from tui.config import ChatSettings, ModelSource
from tui.events import (
    EngineFailed,
    EngineReady,
    LogRecordPosted,
    PullProgress,
    ReplyChunk,
    ReplyDone,
    ReplyFailed,
    ReplyNotice,
    TargetTimed,
)
from tui.screens import ConversationsScreen, PairScreen, SettingsScreen
from tui.speed import Speedup, live_estimate, measured
from tui.widgets import MessageList, Note, PromptInput, Reply, StatusBar, UserMessage

PLACEHOLDER = ("Message  (Enter sends · Ctrl+J new line · ↑↓ history · "
               "/attach PATH: a file)")  # 76 columns: the box's inside at 80
LEGEND = "[b $success]accepted draft tokens[/]  [$warning]tokens the target wrote itself[/]"


class ChatApp(App[None]):
    """`svip-local chat`: one conversation at a time with one draft+target pair."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "svip-local chat"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+r", "regenerate", "Retry"),
        Binding("ctrl+e", "edit_last", "Edit"),
        Binding("ctrl+t", "toggle_origin", "Origin"),
        Binding("ctrl+o", "open_saved", "Open"),
        # With the prompt's Edit and Newline these fill a footer of 80 columns: hence "Setup",
        # and no Ctrl+C there (it quits as in every terminal program; so does q in the chat).
        Binding("ctrl+s", "settings", "Setup"),
        Binding("ctrl+l", "pick_pair", "Models"),
        Binding("ctrl+c", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(self, source: ModelSource | None, settings: ChatSettings | None = None) -> None:
        super().__init__()
        self.source = source
        self.settings = settings or ChatSettings()
        self.conversation = Conversation(system_prompt=self.settings.system_prompt)
        self.engine: Engine | None = None
        self.template: ChatTemplate | None = None
        self.policy: Plan | None = None
        self.last_stats: GenerationStats | None = None
        self.speedup: Speedup | None = None  # the last reply's, once known
        self.time_target = True  # time the target alone after replies (benchmarks turn it off)
        self.label = ""
        self._slot = EngineSlot()
        self._cancel: threading.Event | None = None  # set: a reply is streaming
        self._timing: threading.Event | None = None  # the last reply's: stops its timing
        self._editing = False
        self._log_handler = _PostingLogHandler(self)

    # -- layout and lifecycle ----------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield MessageList(id="messages")
        with Vertical(id="loading"):
            yield Label("", id="loading-label")
            yield ProgressBar(id="pull-bar")
        yield Static(LEGEND, id="legend")
        yield PromptInput(placeholder=PLACEHOLDER, id="prompt")
        yield StatusBar()
        yield Footer(compact=True)

    def on_mount(self) -> None:
        logging.getLogger("svip_local").addHandler(self._log_handler)
        if self.source is None:
            self.query_one(StatusBar).update("no model: Ctrl+L chooses a pair")
            self.action_pick_pair()
        else:
            self._load(self.source)

    def on_unmount(self) -> None:
        logging.getLogger("svip_local").removeHandler(self._log_handler)
        for event in (self._cancel, self._timing):
            if event is not None:
                event.set()
        self._slot.close()  # waits for the reply worker to stop, then frees the contexts

    @property
    def generating(self) -> bool:
        return self._cancel is not None

    # -- loading -------------------------------------------------------------------------

    def _load(self, source: ModelSource) -> None:
        self.engine = self.template = self.policy = None
        self.last_stats = self.speedup = None
        self.label = source.label
        self.query_one("#loading-label", Label).update(f"Loading {source.label}…")
        self.query_one("#pull-bar").display = False
        self.query_one("#loading").display = True
        self.query_one(StatusBar).update(f"loading {source.label}…")
        self._load_worker(source, self.settings)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load_worker(self, source: ModelSource, settings: ChatSettings) -> None:
        load_engine(self._slot, source, settings, self.post_message)

    def on_pull_progress(self, msg: PullProgress) -> None:
        bar = self.query_one("#pull-bar", ProgressBar)
        bar.display = True
        bar.update(total=msg.total or None, progress=msg.done)
        size = f"{human_size(msg.done)} of {human_size(msg.total)}" if msg.total else ""
        self.query_one("#loading-label", Label).update(f"Pulling {self.label}: {msg.label} {size}")

    def on_engine_ready(self, msg: EngineReady) -> None:
        if msg.engine is not self._slot.engine:
            return  # a load that a later one replaced (and closed) while this message queued
        self.engine, self.template, self.policy = msg.engine, msg.template, msg.engine.policy
        self.query_one("#loading").display = False
        status_bar = self.query_one(StatusBar)
        status_bar.device = device_summary(msg.engine)
        status_bar.policy = self.policy.for_sampling(self.settings.sampling).describe()
        status_bar.show_idle(msg.label)
        self.query_one(PromptInput).focus()

    def on_engine_failed(self, msg: EngineFailed) -> None:
        self.query_one("#loading").display = False
        self.query_one(StatusBar).update("no model loaded: Ctrl+L chooses a pair")
        self._show_error(msg.error)

    # -- sending and streaming -----------------------------------------------------------

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = message_text(event.value)
        prompt = self.query_one(PromptInput)
        if has_attachments(text):
            self._attach_files(prompt, text)
            return
        if not text or not self._ready_to_generate():
            return
        prompt.remember(text)
        prompt.value = ""
        messages = self.query_one(MessageList)
        if self._editing:
            self._editing = False
            self.conversation.edit_last_user(text)
            await self._remove_widgets_from_last_user(include_user=True)
        else:
            self.conversation.add_user(text)
        await messages.mount(UserMessage(text))
        await self._start_reply()

    def _attach_files(self, prompt: PromptInput, text: str) -> None:
        """Put the files of `/attach` lines into the prompt, to be read before Enter sends."""
        try:
            expanded, names = expand(text)
        except AttachError as exc:
            self._show_error(str(exc))
            return
        prompt.value = expanded
        prompt.focus()
        self.notify(f"Attached {', '.join(names)}: Enter sends the message.")

    def _ready_to_generate(self) -> bool:
        if self.generating:
            self.notify("A reply is streaming: wait for it or press Esc.", severity="warning")
        elif self.engine is None:
            self.notify("No model is loaded yet.", severity="warning")
        else:
            return True
        return False

    async def _start_reply(self) -> None:
        assert self.engine is not None and self.template is not None and self.policy is not None
        reply = Reply()
        await self.query_one(MessageList).mount(reply)
        reply.start_stream()
        if self._timing is not None:
            self._timing.set()  # the last reply's timing gives way to this one
        self._cancel = threading.Event()
        self.query_one(StatusBar).update("thinking…")
        self._reply_worker(ReplyJob(self.engine, self.template, self.policy,
                                    self.conversation.prompt(), self.settings, self._cancel,
                                    time_target=self.time_target))

    @work(thread=True, exclusive=True, group="reply", exit_on_error=False)
    def _reply_worker(self, job: ReplyJob) -> None:
        reply_and_time(self._slot, job, self.post_message)

    def _current_reply(self) -> Reply | None:
        replies = self.query(Reply)
        return replies.last() if replies and replies.last().streaming else None

    async def on_reply_chunk(self, msg: ReplyChunk) -> None:
        reply = self._current_reply()
        if reply is not None:
            await reply.append(msg.pieces)
            self.query_one(StatusBar).show_live(msg.live)

    async def on_reply_notice(self, msg: ReplyNotice) -> None:
        reply = self._current_reply()
        await self.query_one(MessageList).mount(Note(msg.text), before=reply)
        self.notify(msg.text, severity="warning")

    async def on_reply_done(self, msg: ReplyDone) -> None:
        done = msg.done
        reply = self._current_reply()
        runs = await reply.finish(done.text, done.finish_reason) if reply else ()
        self.conversation.add_reply(done.text, runs, done.finish_reason)
        self._timing, self._cancel = self._cancel, None
        self.last_stats = done.stats
        self.speedup = live_estimate(done.stats)
        self._show_final_stats()
        if done.finish_reason == "context":
            self.notify("The context is full: Ctrl+N starts a new chat.", severity="warning")
        self._save()

    async def on_reply_failed(self, msg: ReplyFailed) -> None:
        """Take the unanswered message back into the prompt, so it can be changed and resent."""
        self._cancel = None
        reply = self._current_reply()
        if reply is not None:
            await reply.stop_stream()
        if self.conversation.messages and self.conversation.messages[-1].role == "user":
            self.query_one(PromptInput).value = self.conversation.messages.pop().content
            await self._remove_widgets_from_last_user(include_user=True)
        self._show_error(msg.error)
        if self.engine is not None:
            self.query_one(StatusBar).show_idle(self.label)

    def on_target_timed(self, msg: TargetTimed) -> None:
        if msg.engine is not self.engine or msg.stats is not self.last_stats:
            return  # timed after an earlier reply, or on a pair replaced since
        self.speedup = measured(msg.stats, msg.seconds_per_token)
        if not self.generating:
            self._show_final_stats()

    def _show_final_stats(self) -> None:
        stats = self.last_stats
        if stats is None or self.policy is None:
            return
        status_bar = self.query_one(StatusBar)
        # Adaptive policies change as they learn; `auto` says what this reply ran.
        status_bar.policy = stats.policy if stats.live is not None else \
            self.policy.for_sampling(self.settings.sampling).describe()
        status_bar.show_final(stats, self.speedup)

    # -- actions -------------------------------------------------------------------------

    def action_stop(self) -> None:
        """Esc: stop the reply (its text so far stays), or drop an edit, or leave the prompt."""
        if self._cancel is not None:
            self._cancel.set()
            self.query_one(StatusBar).update("stopping…")
        elif self._editing:
            self._editing = False
            self.query_one(PromptInput).value = ""
            self.notify("Edit cancelled.")
        else:
            self.query_one(MessageList).focus()

    async def action_new_chat(self) -> None:
        if self._refuse_while_generating():
            return
        self.conversation = Conversation(system_prompt=self.settings.system_prompt)
        self._editing = False
        await self.query_one(MessageList).remove_children()
        self.query_one(PromptInput).focus()

    async def action_regenerate(self) -> None:
        if self._refuse_while_generating() or not self._ready_to_generate():
            return
        try:
            self.conversation.regenerate()
        except SvipError as exc:
            self.notify(str(exc), severity="warning")
            return
        await self._remove_widgets_from_last_user(include_user=False)
        await self._start_reply()

    def action_edit_last(self) -> None:
        if self._refuse_while_generating():
            return
        try:
            text = self.conversation.last_user_text()
        except SvipError as exc:
            self.notify(str(exc), severity="warning")
            return
        self._editing = True
        prompt = self.query_one(PromptInput)
        prompt.value = text
        prompt.focus()
        self.notify("Editing your last message: Enter resends it, Esc cancels.")

    def action_toggle_origin(self) -> None:
        shown = self.query_one(MessageList).toggle_class("-origin").has_class("-origin")
        self.query_one("#legend").display = shown
        reply = self._current_reply()
        if shown and reply is not None:
            reply.show_origin()  # a streaming reply's origin text is kept only while shown

    def action_open_saved(self) -> None:
        if self._refuse_while_generating():
            return
        saved = list_saved()
        if not saved:
            self.notify("No saved conversations yet.")
            return
        self.push_screen(ConversationsScreen(saved), self._open_conversation)

    async def _open_conversation(self, saved: SavedConversation | None) -> None:
        if saved is None:
            return
        try:
            conversation = Conversation.load(saved.path)
        except SvipError as exc:
            self._show_error(str(exc))
            return
        self.conversation = conversation
        self._editing = False
        messages = self.query_one(MessageList)
        await messages.remove_children()
        await messages.mount_all([UserMessage(m.content) if m.role == "user" else Reply(m)
                                  for m in conversation.messages])
        prompt = self.query_one(PromptInput)
        for m in conversation.messages:
            if m.role == "user":
                prompt.remember(m.content)
        prompt.focus()

    def action_settings(self) -> None:
        current = replace(self.settings, system_prompt=self.conversation.system_prompt)
        self.push_screen(SettingsScreen(current), self._apply_settings)

    def _apply_settings(self, settings: ChatSettings | None) -> None:
        if settings is None:
            return
        if self.engine is not None and settings.policy != self.settings.policy:
            try:
                policy = self.engine.make_policy(settings.policy)
            except SvipError as exc:
                self._show_error(str(exc))
                return
            if self.engine.draft_model is None and policy.needs_draft:
                self._show_error(f"policy {policy.name} needs a draft model")
                return
            self.policy = policy
            self.query_one(StatusBar).policy = policy.for_sampling(
                settings.sampling).describe()
        self.settings = settings
        self.conversation.system_prompt = settings.system_prompt
        self.notify("Settings saved: they apply from the next reply.")

    def action_pick_pair(self) -> None:
        if self._refuse_while_generating():
            return
        try:
            pairs = [status(name) for name in load_registry().names()]
        except SvipError as exc:
            self._show_error(str(exc))
            return
        self.push_screen(PairScreen(pairs), self._pick_pair)

    def _pick_pair(self, name: str | None) -> None:
        if name is not None:
            self._load(ModelSource(pair=name, pull=True))

    # -- helpers -------------------------------------------------------------------------

    def _refuse_while_generating(self) -> bool:
        if self.generating:
            self.notify("A reply is streaming: press Esc to stop it first.", severity="warning")
        return self.generating

    async def _remove_widgets_from_last_user(self, *, include_user: bool) -> None:
        messages = self.query_one(MessageList)
        children = list(messages.children)
        users = [i for i, w in enumerate(children) if isinstance(w, UserMessage)]
        if users:
            start = users[-1] if include_user else users[-1] + 1
            await messages.remove_children(children[start:])

    def _show_error(self, text: str) -> None:
        self.query_one(MessageList).mount(Note(text, error=True))
        self.notify(text, severity="error", timeout=8)

    def _save(self) -> None:
        try:
            self.conversation.save()
        except OSError as exc:
            self.notify(f"could not save the conversation: {exc}", severity="error")

    def on_log_record_posted(self, msg: LogRecordPosted) -> None:
        self.notify(msg.text, severity="error" if msg.error else "warning", timeout=8)


def message_text(value: str) -> str:
    """The prompt's text as a message: blank lines around it and trailing spaces dropped, the
    first line's indentation kept (pasted code may start indented)."""
    return re.sub(r"\A(?:[ \t]*\n)+", "", value.rstrip())


class _PostingLogHandler(logging.Handler):
    """svip_local's warnings become notifications: the terminal belongs to the app."""

    def __init__(self, app: App[None]) -> None:
        super().__init__(level=logging.WARNING)
        self._app = app

    def emit(self, record: logging.LogRecord) -> None:
        self._app.post_message(LogRecordPosted(record.getMessage(),
                                               record.levelno >= logging.ERROR))
