"""Where tables are printed: a terminal keeps its width; a log or CI output gets 150 columns instead of
rich's default 80, which would squeeze the benchmark tables."""

from __future__ import annotations

from rich.console import Console


def wide_console() -> Console:
    return Console() if Console().is_terminal else Console(width=150)
