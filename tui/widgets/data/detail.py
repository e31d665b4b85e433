"""The Data screen's detail pane: a conversation as chat turns rendered as markdown, or an eval item."""

from __future__ import annotations

import re

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static

MAX_CHARS = 20_000  # per turn: Markdown layout of a huge turn would stall the UI thread

# Signs that a turn was written as markdown. Without them a turn is shown as plain text: raw
# code (GPTeacher answers are bare C++/shell) rendered as markdown loses its line breaks and
# anything in <angle brackets>.
_MARKDOWN = re.compile(
    r"^```|^#{1,6} |^\s*(?:[-*+]|\d+[.)]) |\*\*[^*\n]+\*\*|\[[^\]\n]+\]\([^)\n]+\)|^> ", re.MULTILINE
)


def looks_like_markdown(text: str) -> bool:
    return bool(_MARKDOWN.search(text))


def _clip(text: str) -> str:
    text = str(text)
    if len(text) > MAX_CHARS:
        return text[:MAX_CHARS] + f"\n\n*… {len(text) - MAX_CHARS:,} more characters not shown*"
    return text


class Turn(Vertical):
    """One chat turn: the role in the border title, the content as markdown."""

    DEFAULT_CSS = """
    Turn { height: auto; margin: 0 1 1 1; padding: 0 1; border: round $foreground 30%; }
    Turn.-user { border: round $primary; margin-right: 6; }
    Turn.-assistant { border: round $success; margin-left: 6; }
    Turn.-system { border: round $warning; }
    Turn.-gold { border: round $success; }
    Turn Markdown { margin: 0; padding: 0; background: transparent; }
    Turn Markdown > * { margin-bottom: 0; }
    """

    def __init__(self, role: str, content: str, *, markdown: bool | None = None) -> None:
        """`markdown=None`: render as markdown if the text looks like markdown, else as plain text."""
        super().__init__(classes=f"-{role}")
        self.role = role
        self.content = content
        self.markdown = looks_like_markdown(content) if markdown is None else markdown
        self.border_title = role
        self.border_subtitle = "markdown" if self.markdown else "text"

    def compose(self) -> ComposeResult:
        if self.markdown:
            yield Markdown(_clip(self.content))
        else:
            yield Static(_clip(self.content), markup=False)


class DetailPane(VerticalScroll, can_focus=True):
    """Shows one example or item; `show(kind, record)` replaces what is there."""

    DEFAULT_CSS = """
    DetailPane { background: $surface; }
    DetailPane #detail-meta { color: $text-muted; padding: 0 1; height: auto; }
    DetailPane #detail-empty { color: $text-muted; padding: 1 2; }
    """
    BINDINGS = [("up,k", "scroll_up", "Scroll up"), ("down,j", "scroll_down", "Scroll down")]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record: dict | None = None

    def compose(self) -> ComposeResult:
        yield Static("Select a row to see it here (enter opens it).", id="detail-empty")

    async def show(self, kind: str, record: dict) -> None:
        self.record = record
        turns: list[Turn] = []
        if kind == "suite":
            meta = f"{record['suite']} · item {record['idx'] + 1} · task {record['task']}" + (
                f" · {record['key']}" if record.get("key") else ""
            )
            code = record.get("suite_kind") == "code"
            turns.append(
                Turn(
                    "user",
                    f"```python\n{record['prompt']}\n```" if code else record["prompt"],
                    markdown=True if code else None,
                )
            )
            if record.get("choices"):
                turns.append(
                    Turn(
                        "choices",
                        "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(record["choices"])),
                        markdown=False,
                    )
                )
            if record.get("gold"):
                turns.append(Turn("gold", " | ".join(map(str, record["gold"])), markdown=False))
            if record.get("tests"):
                turns.append(Turn("tests", f"```python\n{record['tests']}\n```"))
        else:
            conv = record.get("conversation") or []
            meta = (
                f"{record['dataset']} · example {record['idx'] + 1} · ~{record['n_tokens']:,} tokens"
                f" · {len(conv)} turns" + (f" · {record['source']}" if record.get("source") else "")
            )
            for t in conv:
                turns.append(Turn(str(t.get("role", "?")), str(t.get("content", ""))))
        with self.app.batch_update():
            await self.remove_children()
            await self.mount(Static(meta, id="detail-meta", markup=False), *turns)
        self.scroll_home(animate=False)

    def clear(self) -> None:
        self.record = None
        self.remove_children()
        self.mount(Static("Nothing selected.", id="detail-empty"))
