"""Builds small, deterministic workspaces for the TUI tests by inserting rows with SQL."""

from __future__ import annotations

import hashlib
import json

from core.store.workspace import Workspace, now

SEARCH_WORD = "zephyr"  # appears in exactly these example positions
SEARCH_HITS = (3, 17, 150)


def conversation(i: int) -> list[dict]:
    topic = SEARCH_WORD if i in SEARCH_HITS else f"topic{i}"
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"Question {i}: tell me about {topic}."},
        {
            "role": "assistant",
            "content": (
                f"## About {topic}\n\nHere is **what I know** about {topic}:\n\n"
                f"- first point {i}\n- second point\n\n```python\nprint({i})\n```"
            ),
        },
    ]


def build(root, *, examples: int = 300, items: int = 40) -> Workspace:
    ws = Workspace.init(root)
    with ws.transaction():
        did = ws.db.execute(
            "insert into datasets (name, kind, format, source, meta, created_at) values (?,?,?,?,?,?)",
            ["chat", "imitation", "messages", "chat.jsonl", json.dumps({"duplicates": 2}), now()],
        ).lastrowid
        rows = []
        for i in range(examples):
            conv = conversation(i)
            user = "\n".join(t["content"] for t in conv if t["role"] == "user")
            asst = "\n".join(t["content"] for t in conv if t["role"] == "assistant")
            rows.append(
                (
                    did,
                    i,
                    "chat.jsonl",
                    json.dumps(conv),
                    user,
                    asst,
                    40 + i % 7,
                    hashlib.sha1(json.dumps(conv).encode()).hexdigest(),
                )
            )
        ws.db.conn.executemany(
            "insert into examples (dataset_id, idx, source, conversation, user_text, assistant_text, n_tokens,"
            " content_hash) values (?,?,?,?,?,?,?,?)",
            rows,
        )
        sid = ws.db.execute(
            "insert into suites (name, kind, format, source, created_at) values (?,?,?,?,?)",
            ["nq", "qa", "qa", "NQ-open.dev.jsonl", now()],
        ).lastrowid
        ws.db.conn.executemany(
            "insert into items (suite_id, idx, prompt, task, gold, content_hash) values (?,?,?,?,?,?)",
            [
                (
                    sid,
                    i,
                    f"who wrote the book number {i}?" if i != 5 else "when was the zephyr locomotive built?",
                    "literature" if i % 2 else "history",
                    json.dumps([f"author {i}", f"a{i}"]),
                    f"h{i}",
                )
                for i in range(items)
            ],
        )
    return ws
