"""The Data screen's list of datasets and suites, each with its counts and token total."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import OptionList
from textual.widgets.option_list import Option


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def option_id(kind: str, name: str) -> str:
    return f"{kind}:{name}"


class SourceList(OptionList):
    """Options have ids "dataset:NAME" / "suite:NAME"; section titles are disabled options."""

    DEFAULT_CSS = """
    SourceList { height: 1fr; border: none; background: $surface; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sources: dict[str, dict] = {}

    def fill(self, datasets: list[dict], suites: list[dict]) -> None:
        keep = self.highlighted_option.id if self.highlighted_option is not None else None
        self.clear_options()
        self.sources = {}
        options: list[Option] = []
        if datasets:
            options.append(Option(Text("DATASETS", style="bold dim"), disabled=True, id="-datasets"))
        for d in datasets:
            oid = option_id("dataset", d["name"])
            self.sources[oid] = {**d, "_kind": "dataset"}
            sub = f"{d['examples']:,} ex · ~{human(d['tokens'])} tok" + (" · subset" if d["kind"] == "subset" else "")
            options.append(Option(Text.assemble((d["name"], "bold"), "\n  ", (sub, "dim")), id=oid))
        if suites:
            options.append(Option(Text("SUITES", style="bold dim"), disabled=True, id="-suites"))
        for s in suites:
            oid = option_id("suite", s["name"])
            self.sources[oid] = {**s, "_kind": "suite"}
            sub = f"{s['items']:,} items · {s['tasks']} task{'s' if s['tasks'] != 1 else ''} · {s['kind']}"
            options.append(Option(Text.assemble((s["name"], "bold"), "\n  ", (sub, "dim")), id=oid))
        self.add_options(options)
        ids = [o for o in self.sources]
        if ids:
            target = keep if keep in self.sources else ids[0]
            self.highlighted = self.get_option_index(target)
