"""Imitation data: detecting a record's format and normalising it to [{role, content}] turns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import FieldError, read_str, type_name

DATA_FORMATS = ("sharegpt", "alpaca", "messages")

_ROLE_FROM = {  # ShareGPT `from` values seen in the wild -> chat roles
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "claude": "assistant",
    "gpt-4": "assistant",
    "system": "system",
}
_ROLE_MESSAGES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def detect_data_format(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return None
    if "conversations" in rec:
        return "sharegpt"
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and ("output" in rec or "response" in rec):
        return "alpaca"
    return None


def _turns_sharegpt(rec: dict) -> list[dict]:
    conv = rec.get("conversations")
    if type(conv) is list:
        # The common case in one tight loop (this runs per record on the import's critical path);
        # anything unusual falls through to the careful loop below, which names the bad field.
        try:
            out = []
            for t in conv:
                value = t["value"]
                if type(value) is not str:
                    raise TypeError
                out.append({"content": value, "role": _ROLE_FROM[t["from"].lower()]})
            return out
        except (KeyError, TypeError, AttributeError):
            pass
    if conv is None:
        raise FieldError("conversations", "missing")
    if not isinstance(conv, list):
        raise FieldError("conversations", f"expected a list of turns, got {type_name(conv)}")
    out = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            raise FieldError(f"conversations[{i}]", f"expected an object, got {type_name(t)}")
        who = t.get("from", t.get("role"))
        if not isinstance(who, str):
            raise FieldError(
                f"conversations[{i}].from", "missing" if who is None else f"expected a string, got {type_name(who)}"
            )
        role = _ROLE_FROM.get(who.lower())
        if role is None:
            raise FieldError(f"conversations[{i}].from", f"unknown speaker '{who}' (expected human, gpt or system)")
        value = t.get("value", t.get("content"))
        if not isinstance(value, str):
            raise FieldError(
                f"conversations[{i}].value",
                "missing" if value is None else f"expected a string, got {type_name(value)}",
            )
        out.append({"content": value, "role": role})
    return out


def _content(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text ones
        parts = []
        for j, p in enumerate(value):
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
            else:
                raise FieldError(f"{field}[{j}]", "expected a text part")
        return "".join(parts)
    raise FieldError(field, "missing" if value is None else f"expected a string, got {type_name(value)}")


def _turns_messages(rec: dict) -> list[dict]:
    msgs = rec.get("messages")
    if msgs is None:
        raise FieldError("messages", "missing")
    if not isinstance(msgs, list):
        raise FieldError("messages", f"expected a list of messages, got {type_name(msgs)}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise FieldError(f"messages[{i}]", f"expected an object, got {type_name(m)}")
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLE_MESSAGES:
            raise FieldError(
                f"messages[{i}].role",
                "missing" if role is None else f"unknown role '{role}' (expected system, user or assistant)",
            )
        out.append({"content": _content(m.get("content"), f"messages[{i}].content"), "role": _ROLE_MESSAGES[role]})
    return out


def _turns_alpaca(rec: dict) -> list[dict]:
    instruction = read_str(rec, "instruction")
    extra = read_str(rec, "input", required=False)
    if "output" not in rec and "response" not in rec:
        raise FieldError("output", "missing (expected output or response)")
    output = read_str(rec, "output" if "output" in rec else "response")
    system = read_str(rec, "system", required=False)
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    turns = [{"content": system, "role": "system"}] if system else []
    return turns + [{"content": user, "role": "user"}, {"content": output, "role": "assistant"}]


_NORMALISERS: dict[str, Callable[[dict], list[dict]]] = {
    "sharegpt": _turns_sharegpt,
    "messages": _turns_messages,
    "alpaca": _turns_alpaca,
}


def normalise_conversation(rec: Any, fmt: str) -> list[dict]:
    """The record as [{role, content}]; raises FieldError naming the field that is wrong.

    Each turn's keys are in sorted order (content, role), so orjson writes the same bytes as the
    key-sorted `workspace.dumps` without sorting (the content hash is of those bytes)."""
    if not isinstance(rec, dict):
        raise FieldError(None, f"expected an object, got {type_name(rec)}")
    turns = _NORMALISERS[fmt](rec)
    spoken = [t["role"] for t in turns if t["content"].strip()]
    if not spoken:
        raise FieldError(_conv_field(fmt), "empty conversation")
    if "assistant" not in spoken:
        raise FieldError(_conv_field(fmt), "no assistant turn")
    if "user" not in spoken:
        raise FieldError(_conv_field(fmt), "no user turn")
    return turns


def _conv_field(fmt: str) -> str:
    return {"sharegpt": "conversations", "messages": "messages", "alpaca": "output"}[fmt]
