"""The Textual chat app on top of svip_local: `svip-local chat NAME` opens `tui.app.ChatApp`.

Layering: this package uses only svip_local's public engine, chat and registry API, and
svip_local never imports it (nor textual), so the engine stays embeddable without a UI.
"""
