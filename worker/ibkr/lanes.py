"""The client's connections: lanes of one kept-alive connection each, and the transport under
them (docs/architecture.md, "The IBKR client's connections", says why they are shaped so).

A lane is an httpx client with a pool of one connection. A request holds a lane (`permit`)
from before its caller commits SUBMITTING until its answer is read, so no request waits for a
connection once it may leave; the token request has a lane of its own.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from worker._compat import departure_guarded_transport

#: Requests a client has on the wire at once (lanes, plus one kept for the token request). A
#: worker thread takes one before it commits SUBMITTING, so they also bound the requests a
#: process takes in at once. httpcore opens the connections only as they are needed.
DEFAULT_REQUEST_CONNECTIONS = 32
_USER_AGENT = "ibkr-worker"


def http_limits(request_connections: int = DEFAULT_REQUEST_CONNECTIONS) -> httpx.Limits:
    """Connections of one client: one per request permit plus one for the token request (each
    permit and the token request have a pool of one of their own: `http_limits(0)`).

    Every one is kept alive and none is expired by the client: httpcore (1.0.9) closes an idle
    connection when the pool holds more than `max_keepalive_connections` (counting all of them,
    not the idle ones) or when its keep-alive expiry passes, and such a close can hit a
    connection just handed to a waiting request, whose POST then hangs for the whole read
    timeout (encode/httpcore#1110). A connection the server closed is still dropped before
    reuse (httpcore checks an idle socket for the server's close), and TCP keep-alive probes
    find one a network dropped silently.
    """
    total = request_connections + 1
    return httpx.Limits(
        max_connections=total, max_keepalive_connections=total, keepalive_expiry=None
    )


HTTP_LIMITS = http_limits()


def _tcp_keepalive() -> list[tuple[int, int, int]]:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # Probe after 30 s idle, every 10 s, give up after 3 unanswered (where the OS lets us say).
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def http_transport(request_connections: int = DEFAULT_REQUEST_CONNECTIONS) -> httpx.HTTPTransport:
    """The transport of every IBKR client: `http_limits`, TCP keep-alive, and the departure
    check at each request's first write (`worker._compat`)."""
    return departure_guarded_transport(http_limits(request_connections), _tcp_keepalive())


class _SetCookies(httpx.Cookies):
    """A cookie jar that only looks at responses that set a cookie: httpx hands every response
    to the jar, which builds urllib request and response stand-ins to find nothing. IBKR's API
    authenticates by bearer token; a cookie a load balancer sets is still kept and sent back."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class Lane(httpx.Client):
    """`httpx.Client` of one connection, with the `_SetCookies` jar."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jar = _SetCookies(super().cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._jar = _SetCookies(cookies)


class Lanes:
    """`request_connections` request lanes and the token lane, all to `base_url`.

    `transport` replaces the network transport of every lane (tests, the in-process sandbox);
    `departs_at_write` then turns False: only the network transport can take a request's
    rate-limit slot at its first write."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float,
        request_connections: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        def lane() -> Lane:
            # One connection each: finding a free connection never scans a pool (httpcore's
            # does, for every request, across all its connections).
            return Lane(
                base_url=base_url,
                transport=transport or http_transport(0),
                timeout=httpx.Timeout(timeout_s),
                headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
                limits=http_limits(0),
            )

        self.departs_at_write = transport is None
        # The most recently used lane first: at a low rate a few connections do all the work.
        self._free: queue.LifoQueue[Lane] = queue.LifoQueue()
        for _ in range(request_connections):
            self._free.put(lane())
        self.token = lane()
        self._all = [*self._free.queue, self.token]
        self._holding = threading.local()
        # Absolute URLs of the paths without parameters (every POST): httpx parses a relative
        # URL and then the merged one again on every request.
        self.base = str(self.token.base_url).rstrip("/")
        self._fixed_urls: dict[str, httpx.URL] = {}

    @contextmanager
    def permit(self) -> Iterator[None]:
        """Hold a request lane (waiting for one if all are busy); re-entrant within a thread."""
        if getattr(self._holding, "lane", None) is not None:
            yield
            return
        lane = self._free.get()
        self._holding.lane = lane
        try:
            yield
        finally:
            self._holding.lane = None
            self._free.put(lane)

    def held(self) -> Lane:
        """The lane this thread holds (inside `permit`)."""
        lane: Lane | None = getattr(self._holding, "lane", None)
        assert lane is not None, "a request is made while holding a permit"
        return lane

    def url(self, template: str, url_path: str) -> httpx.URL:
        """The absolute URL of `url_path` (an endpoint's path `template` with its ids filled
        in); kept for a path without ids."""
        if url_path != template:  # with an id in it: parsed once, not kept
            return httpx.URL(self.base + url_path)
        url = self._fixed_urls.get(url_path)
        if url is None:
            url = self._fixed_urls[url_path] = httpx.URL(self.base + url_path)
        return url

    def close(self) -> None:
        """Close every lane's kept-alive connection."""
        for lane in self._all:
            lane.close()
