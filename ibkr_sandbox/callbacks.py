"""IBKR's status-change callbacks (reference §7.4), as the sandbox sends them: every change,
signed with the sandbox's key, POSTed in order to the configured URL from one background
thread."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from typing import Any

import structlog

from ibkr_sandbox.auth import Authority

log = structlog.get_logger(__name__)


class Callbacks:
    """Posts every status change, signed with the sandbox key, to `url`, in order."""

    def __init__(self, url: str, authority: Authority) -> None:
        self.url = url
        self._authority = authority
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="sandbox-callbacks", daemon=True)
        self._thread.start()

    def put(self, envelope: dict[str, Any]) -> None:
        self._queue.put(envelope)

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            envelope = self._queue.get()
            if envelope is None:
                return
            now = int(time.time())
            token = self._authority.sign(
                {**envelope, "iss": "/token", "iat": now, "exp": now + 300}
            )
            request = urllib.request.Request(  # noqa: S310 - the operator configures the URL
                self.url,
                data=token.encode("ascii"),
                headers={"Content-Type": "application/jwt"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5):  # noqa: S310
                    self.sent += 1
            except OSError as error:
                self.failed += 1
                log.warning("sandbox callback failed", url=self.url, error=str(error))
