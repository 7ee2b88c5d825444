"""The IBKR client against the bundled sandbox: starting a sandbox that knows the client's key,
making a client for it, and sending a request as the worker would."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.requests import build_body, parse_request

CLIENT_ID, KEY_ID = "acme", "main"
_ids = itertools.count(5_000_000)
#: `start_sandbox(denied=(), **config)`: a started sandbox that knows the client's key.
SandboxFactory = Callable[..., Any]


def next_id() -> int:
    return next(_ids)


def make_client(sandbox: Any, key: Any, **overrides: Any) -> IbkrClient:
    settings = Settings(
        ibkr_base_url=sandbox.base_url,
        ibkr_client_id=CLIENT_ID,
        ibkr_key_id=KEY_ID,
        http_timeout_s=10.0,
    ).with_overrides(**overrides)
    return IbkrClient(settings, private_key=key)


def send(client: IbkrClient, raw: dict[str, Any], ids: list[int] | None = None) -> Any:
    """POST `raw` as the worker would (validated, ids filled in); returns (result, ids)."""
    parsed = parse_request(raw)
    ids = ids or [next_id() for _ in parsed.members]
    return client.post_instruction(parsed.endpoint, build_body(parsed, ids)), ids
