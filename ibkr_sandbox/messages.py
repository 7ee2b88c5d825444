"""One HTTP request and one answer as the sandbox sees them, independent of any socket, and the
answers every part builds (JSON, IBKR's problem shape)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker import jsontext

PATH_DETAIL = (
    "Request path does not contain all expected fields, please consult provided documentation, "
    "escalate to IB contact if issue persists"
)
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    """One HTTP request as the app sees it; `headers` keys are lower case."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""
    client_host: str = "127.0.0.1"
    #: Real POSIX seconds at receipt (the first thing the ASGI app does, or entry of the
    #: in-process transport); None: stamped when `SandboxApp.handle` starts.
    received_at: float | None = None


@dataclass
class Response:
    """One HTTP answer. `drop`: close the connection without answering (a lost response).
    `hold_s`: wait this many real seconds before answering; then, when `complete` is set, call
    it for the answer (a POST held in flight registers only then), else answer this one."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    close: bool = False
    hold_s: float = 0.0
    complete: Callable[[], Response] | None = None

    @property
    def held(self) -> bool:
        """True when the caller must wait `hold_s` and then call `finish` for the answer."""
        return self.hold_s > 0 or self.complete is not None

    def finish(self) -> Response:
        """The answer once the hold is over: `complete()` when set (the held POST registers
        now), else this one."""
        return self.complete() if self.complete is not None else self


def received(request: Request) -> float:
    """The request's receipt stamp (`SandboxApp.handle` sets it before routing)."""
    if request.received_at is None:
        raise RuntimeError("a request reached routing without a receipt stamp")
    return request.received_at


def is_loopback(host: str) -> bool:
    """True for a loopback client address (IPv4, IPv6, IPv4-mapped IPv6)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def json_response(status: int, body: Any, *, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (exact Decimal amounts)."""
    return Response(status, jsontext.dumps(body).encode("ascii"), headers=headers or {})


def problem_json(status: int, body: Any, *, headers: dict[str, str] | None = None) -> Response:
    """An `application/problem+json` answer with `body` as given."""
    return Response(
        status,
        jsontext.dumps(body).encode("ascii"),
        content_type="application/problem+json",
        headers=headers or {},
    )


def problem(
    status: int,
    detail: str,
    *,
    kind: str = "/simple",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An `application/problem+json` answer in IBKR's shape."""
    body = {"type": kind, "title": _TITLES.get(status, "Error"), "status": status}
    body["detail"] = detail
    body.update(extra)
    return problem_json(status, body, headers=headers)


def internal_error(error: Exception) -> Response:
    """The 500 a sandbox bug answers (rather than hanging the caller)."""
    return problem(500, f"Internal Server Error: {type(error).__name__}: {error}")


def refusal_before_body(headers: Mapping[str, str], max_body_bytes: int) -> Response | None:
    """The answer to a request refused from its headers alone (`headers` keys lower case),
    before its body is read, or None: a chunked body (411), a bad or too large Content-Length
    (400, 413). The connection closes after it: the unread body makes it unusable."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        refused = problem(411, "Send a Content-Length")
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            length, refused = 0, problem(400, "Bad Content-Length")
        else:
            if length <= max_body_bytes:
                return None
            refused = problem(413, "Request body exceeds the 20 MB limit")
    refused.close = True
    return refused
