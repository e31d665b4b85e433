"""mirage core: the headless library behind the `mirage` CLI and the TUI (never imports Textual)."""

__version__ = "0.1.0"
