"""OpenAI-compatible endpoints: the API key from the environment and the `openai` client.

A spec names the environment variable that holds the key, never the key, so nothing secret is
written to the workspace.
"""

from __future__ import annotations

import os

from core.errors import EndpointError
from core.runtime.secrets import remember

DEFAULT_TIMEOUT_S = 120


def api_key(name: str, spec: dict) -> str:
    env = spec.get("api_key_env")
    if not env:
        return "EMPTY"  # local servers (transformers serve, vLLM) accept any key
    value = os.environ.get(env)
    if not value:
        raise EndpointError(f"model '{name}': environment variable {env} is not set (it should hold the API key)")
    remember(value)  # an endpoint may echo the key in an error body: it is redacted from every message
    return value


def make_client(name: str, spec: dict, *, timeout: float | None = None):
    """(openai.OpenAI, model_id) for an endpoint spec."""
    import openai

    # Retries are ours (core.models.generation): bounded, with backoff and a clear final error.
    client = openai.OpenAI(
        base_url=spec["base_url"],
        api_key=api_key(name, spec),
        timeout=timeout or float(spec.get("timeout_s", DEFAULT_TIMEOUT_S)),
        max_retries=0,
    )
    return client, spec["model"]
