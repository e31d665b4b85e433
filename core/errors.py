"""Typed errors: every failure a user can cause carries a title and a one-line message."""

from __future__ import annotations


class MirageError(Exception):
    """An expected failure: the CLI prints `error: <message>` and exits 1; the TUI shows a modal."""

    title = "Error"
    exit_code = 1

    def __init__(self, message: str, *, title: str | None = None):
        super().__init__(message)
        self.message = message
        if title:
            self.title = title

    def __str__(self) -> str:
        return self.message


class WorkspaceError(MirageError):
    title = "Workspace"


class ConfigError(MirageError):
    title = "Configuration"
    exit_code = 2


class BadInput(MirageError):
    """Bad data in a file: names the file, the line (or row) and the field."""

    title = "Bad input"

    def __init__(self, path, message: str, *, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message


class NotFound(MirageError):
    title = "Not found"


class ModelError(MirageError):
    title = "Model"


class EndpointError(MirageError):
    title = "Endpoint"


class JobError(MirageError):
    title = "Job"


class Cancelled(MirageError):
    title = "Cancelled"


class FieldError(Exception):
    """One record's field that is wrong: `field` (None: the record itself) and why.

    Raised while reading a record and caught by the importer, which adds the file and line
    (`BadInput`); it never reaches a user on its own.
    """

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def type_name(v) -> str:
    """A value's JSON type in words, for messages: "an object", "a list", "a number", ..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


def read_str(rec: dict, key: str, *, required: bool = True, field: str | None = None) -> str | None:
    """`rec[key]` as a string; FieldError (named `field`, else `key`) when missing or not a string."""
    v = rec.get(key)
    if v is None:
        if required:
            raise FieldError(field or key, "missing")
        return None
    if not isinstance(v, str):
        raise FieldError(field or key, f"expected a string, got {type_name(v)}")
    return v


class SandboxUnavailable(MirageError):
    """Model-written code cannot be confined here: it is refused, never run unconfined."""

    title = "Code sandbox"
