"""Modal screens: settings, saved conversations, and the registry's pairs.

Each returns its result through `dismiss` (None when cancelled) and touches no app state, so
the app decides what a result means and tests can drive each screen on its own.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from svip_local.conversation import SavedConversation
from svip_local.registry import PairStatus, human_size
from tui.config import POLICY_NAMES, ChatSettings, parse_form


class SettingsScreen(ModalScreen[ChatSettings | None]):
    """System prompt, draft policy and its parameter, temperature, max tokens."""

    BINDINGS = [Binding("escape", "dismiss", "Cancel"), Binding("ctrl+s", "save", "Save")]

    def __init__(self, settings: ChatSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(classes="dialog"):
            yield Label("Settings", classes="title")
            with Grid(id="settings-grid"):
                yield Label("System prompt")
                yield Input(s.system_prompt, id="system", compact=True,
                            placeholder="(the model's default)")
                yield Label("Draft policy")
                yield Select([(n, n) for n in POLICY_NAMES], value=s.policy_name,
                             allow_blank=False, id="policy", compact=True)
                yield Label("Policy parameter")
                yield Input(s.policy_parameter, id="parameter", compact=True,
                            placeholder="default (svip h, pmin p, constant K...)")
                yield Label("Temperature")
                yield Input(f"{s.temperature:g}", id="temperature", compact=True)
                yield Label("Max tokens")
                yield Input(str(s.max_tokens), id="max-tokens", compact=True)
            yield Static("", id="settings-error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        value = self.query_one("#policy", Select).value
        try:
            settings = parse_form(
                self.query_one("#system", Input).value, str(value),
                self.query_one("#parameter", Input).value,
                self.query_one("#temperature", Input).value,
                self.query_one("#max-tokens", Input).value, self.settings)
        except ValueError as exc:
            self.query_one("#settings-error", Static).update(str(exc))
            return
        self.dismiss(settings)


class ConversationsScreen(ModalScreen[SavedConversation | None]):
    """Saved conversations, newest first; Enter opens one."""

    BINDINGS = [Binding("escape", "dismiss", "Cancel")]

    def __init__(self, saved: list[SavedConversation]) -> None:
        super().__init__()
        self.saved = saved

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Open a conversation", classes="title")
            yield OptionList(*[
                Option(f"{c.title}\n  {c.updated[:16].replace('T', ' ')} · {c.n_messages} messages",
                       id=str(i))
                for i, c in enumerate(self.saved)])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.saved[int(event.option.id or 0)])


class PairScreen(ModalScreen[str | None]):
    """The registry's pairs; choosing one that is not downloaded agrees to download it."""

    BINDINGS = [Binding("escape", "dismiss", "Cancel")]

    def __init__(self, pairs: list[PairStatus]) -> None:
        super().__init__()
        self.pairs = pairs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Choose a model pair", classes="title")
            yield OptionList(*[Option(_pair_line(p), id=p.name) for p in self.pairs])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


def _pair_line(pair: PairStatus) -> str:
    if pair.downloaded:
        return f"{pair.name}\n  downloaded"
    return f"{pair.name}\n  not downloaded: Enter downloads {human_size(pair.missing_bytes)}"
