"""The IBKR client over httpx's transport seam, for the client's unit tests: a scripted
gateway (token endpoint plus a /gw handler that records every request), the body it is sent,
and a client on a manual clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx

from tests import builders
from worker.clock import ManualClock
from worker.config import Settings
from worker.ibkr.client import IbkrClient

BASE = "https://ibkr.test"
BODY = builders.transfer(1012983, Decimal("123.45"))
ACCEPTED = {
    "status": 202,
    "instructionSetId": 1703,
    "instructionResult": {
        "clientInstructionId": 1012983,
        "instructionType": "INTERNAL_CASH_TRANSFER",
        "instructionStatus": "PENDING",
        "instructionId": 43091814,
    },
}

Handler = Callable[[httpx.Request], httpx.Response]


class Gateway:
    """Token endpoint plus a scripted /gw handler; records every /gw request."""

    def __init__(self, gw: Handler) -> None:
        self.gw = gw
        self.requests: list[httpx.Request] = []
        self.tokens: list[str] = []
        self.token_status = 200
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/api/v1/token":
            if self.token_status != 200:
                return httpx.Response(self.token_status, json={"title": "Bad Request"})
            token = f"eyJaccess{len(self.tokens)}.eyJx.c2lnbmF0dXJlMTIzNDU2Nzg"
            self.tokens.append(token)
            return httpx.Response(200, json={"access_token": token, "expires_in": 86399})
        with self._lock:
            self.requests.append(request)
        return self.gw(request)


def settings(**changes: Any) -> Settings:
    base = Settings(
        ibkr_base_url=BASE,
        ibkr_client_id="acme",
        ibkr_key_id="main",
        max_requests_per_second_per_endpoint=10,
        max_requests_per_minute=600,
    )
    return base.with_overrides(**changes)


def make_client(gateway: Gateway, key: Any, clock: ManualClock, **kwargs: Any) -> IbkrClient:
    return IbkrClient(
        settings(),
        private_key=key,
        transport=httpx.MockTransport(gateway),
        clock=clock,
        **kwargs,
    )
