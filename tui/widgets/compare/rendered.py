"""A scrolling view of one rich renderable, rendered once to lines and painted with the line API.

Why not a `Static` in a `VerticalScroll`: an auto-height Static renders its content once to find
its height and again to paint it, and each new item re-lays out the whole screen. Here the
markdown is rendered once per item (at the view's width), and painting a line is a list lookup,
which keeps `j` on the Compare screen within a frame on 5,000 items × 4 models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from rich.console import RenderableType
from rich.segment import Segment
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip


class RenderedView(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    RenderedView { height: 1fr; scrollbar-gutter: stable; scrollbar-size-vertical: 1; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._renderable: RenderableType | None = None
        self._strips: list[Strip] = []
        self._rendered_width = -1
        self._key: Hashable | None = None
        # (key, width) -> painted lines: the neighbouring items, rendered while the user reads.
        self._cache: OrderedDict[tuple, list[Strip]] = OrderedDict()

    CACHE_SIZE = 8

    def set_renderable(
        self, renderable: RenderableType | Callable[[], RenderableType], key: Hashable | None = None
    ) -> None:
        """Show `renderable` (or what a factory makes, called only if `key`'s lines are not cached)."""
        self._renderable = renderable
        self._key = key
        self._rendered_width = -1
        self.scroll_to(0, 0, animate=False, immediate=True)
        self._render_strips()

    def prerender(self, renderable: RenderableType | Callable[[], RenderableType], key: Hashable) -> bool:
        """Paint `key`'s lines ahead of showing them; False if they were cached already."""
        width = self.scrollable_content_region.width
        if width > 0 and self.is_attached and (key, width) not in self._cache:
            self._remember((key, width), self._paint(renderable, width))
            return True
        return False

    def _remember(self, cache_key: tuple, strips: list[Strip]) -> None:
        self._cache[cache_key] = strips
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    def _paint(self, renderable: RenderableType | Callable[[], RenderableType], width: int) -> list[Strip]:
        if callable(renderable) and not hasattr(renderable, "__rich_console__"):
            renderable = renderable()
        console = self.app.console
        options = console.options.update(width=width, min_width=width, max_width=width, height=None, highlight=False)
        lines = console.render_lines(renderable, options, pad=False)
        style = self.rich_style
        return [Strip(Segment.simplify(line)).crop_extend(0, width, style).apply_style(style) for line in lines]

    @property
    def line_count(self) -> int:
        return len(self._strips)

    def plain_lines(self) -> list[str]:
        return [s.text for s in self._strips]

    def _render_strips(self) -> None:
        width = self.scrollable_content_region.width
        if self._renderable is None or width <= 0 or not self.is_attached:
            return
        style = self.rich_style
        if style != getattr(self, "_style", None):
            self._cache.clear()  # painted with another base style (theme, focus)
        self._style = style
        cache_key = (self._key, width)
        # Painted as they will be shown, once: render_line is then a lookup.
        strips = self._cache.get(cache_key) if self._key is not None else None
        if strips is None:
            strips = self._paint(self._renderable, width)
            if self._key is not None:
                self._remember(cache_key, strips)
        self._strips = strips
        self._rendered_width = width
        self._set_virtual_size(Size(width, len(self._strips)))
        self.refresh()

    def _set_virtual_size(self, size: Size) -> None:
        # Setting `virtual_size` lays out the whole screen. When the scrollbar neither appears nor
        # disappears, updating it in place is enough and spares the layout.
        old = self.virtual_size
        height = self.scrollable_content_region.height
        if old.width == size.width and (old.height > height) == (size.height > height):
            self.set_reactive(RenderedView.virtual_size, size)
            self._scroll_update(size)
        else:
            self.virtual_size = size

    def on_resize(self) -> None:
        if self.scrollable_content_region.width != self._rendered_width:
            self._render_strips()

    def on_mount(self) -> None:
        self._render_strips()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self._strips and self.rich_style != getattr(self, "_style", None):
            self._render_strips()  # theme or focus changed the base style

    def render_line(self, y: int) -> Strip:
        # Called for every visible line on every repaint: only cached values here.
        scroll_x, scroll_y = self.scroll_offset
        index = y + scroll_y
        width = self._rendered_width
        if 0 <= index < len(self._strips) and width > 0:
            strip = self._strips[index]
            return strip if scroll_x == 0 else strip.crop_extend(scroll_x, scroll_x + width, self._style)
        return Strip.blank(max(width, self.size.width), getattr(self, "_style", None))
