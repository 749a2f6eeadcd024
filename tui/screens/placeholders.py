"""Panels for what arrives in a later release."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from tui.screens.nav import nav_bindings

DEVICES = """\
Devices

Assigning USB devices, block devices, microphones and cameras to qubes (qvm-device)
arrives in a later release. Until then qlite passes no host device into any qube."""

AEM = """\
Anti-evil-maid

Anti-evil-maid (a TPM-sealed secret that proves the boot chain was not tampered
with) arrives in a later release. qlite does not measure or attest this host's boot
yet; protect the machine's firmware and disk encryption by other means."""


class PlaceholderScreen(Screen):
    def __init__(self, text: str, title: str) -> None:
        super().__init__()
        self.text = text
        self.title_text = title

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self.text, classes="placeholder", markup=False)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.sub_title = self.title_text


class DevicesScreen(PlaceholderScreen):
    BINDINGS = nav_bindings("devices")

    def __init__(self) -> None:
        super().__init__(DEVICES, "devices")


class AemScreen(PlaceholderScreen):
    BINDINGS = nav_bindings("aem")

    def __init__(self) -> None:
        super().__init__(AEM, "anti-evil-maid")
