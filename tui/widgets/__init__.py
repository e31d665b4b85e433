"""Widgets of the mirage app, grouped by the screen that uses them (shared ones at this level)."""
