"""Assemble a process: database, IBKR client with the shared rate budget, tracking context."""

from __future__ import annotations

import os
import random
import socket
import uuid
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from worker.clock import Clock, DatabaseClock, SystemClock
from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.ratelimit import RateLimiter
from worker.store import Store
from worker.store.clock import database_time_reader
from worker.store.ratelimit import SqlLedger
from worker.tracking.context import NullObserver, Observer, TrackingContext


@dataclass
class Runtime:
    """What one process holds: close it on the way out."""

    settings: Settings
    store: Store
    client: IbkrClient
    ctx: TrackingContext
    ledger: SqlLedger | None = None
    database_clock: DatabaseClock | None = None
    _writer_store: Store | None = None

    def writer_store(self) -> Store:
        """The store of the process's group-commit writer (`store.group`): a connection of
        its own, not pinged before every transaction (a round trip per batch on the one thread
        all others wait for). A connection lost to a database restart fails that batch, whose
        steps then run alone on the runtime's pinged pool, and the writer's next batch
        connects afresh."""
        if self._writer_store is None:
            self._writer_store = Store.connect(
                self.settings.database_url, pool_size=1, pre_ping=False
            )
        return self._writer_store

    def close(self) -> None:
        self.client.close()
        self.client.rate_limiter.close()
        if self.database_clock is not None:
            self.database_clock.stop()
        self.store.close()
        if self.ledger is not None:
            self.ledger.close()
        if self._writer_store is not None:
            self._writer_store.close()


def process_owner(role: str) -> str:
    """A lease-owner name unique to this process: host, pid and a random suffix."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def build_runtime(
    settings: Settings,
    *,
    actor: str,
    clock: Clock | None = None,
    transport: httpx.BaseTransport | None = None,
    private_key: RSAPrivateKey | None = None,
    observer: Observer | None = None,
    pool_size: int = 10,
) -> Runtime:
    """Store, IBKR client (rate budget shared through the database) and tracking context.

    Without `clock`, a process on PostgreSQL runs on the database's clock (`DatabaseClock`):
    leases, claims, due times and rate-limit slots are judged by one clock on every host.
    """
    store = Store.connect(settings.database_url, pool_size=pool_size)
    database_clock: DatabaseClock | None = None
    if clock is None:
        if store.postgresql:
            database_clock = DatabaseClock(database_time_reader(store)).start()
            clock = database_clock
        else:
            clock = SystemClock()
    ledger = SqlLedger.own(settings.database_url)
    limiter = RateLimiter(
        ledger,
        settings.max_requests_per_second_per_endpoint,
        settings.max_requests_per_minute,
        settings.rate_limit_margin_s,
        clock,
    )
    client = IbkrClient(
        settings, private_key=private_key, transport=transport, rate_limiter=limiter, clock=clock
    )
    ctx = TrackingContext(
        settings=settings,
        store=store,
        ibkr=client,
        clock=clock,
        actor=actor,
        owner=process_owner(actor),
        rng=random.Random(),
        observer=observer or NullObserver(),
        lease_s=settings.lease_s,
    )
    return Runtime(
        settings=settings,
        store=store,
        client=client,
        ctx=ctx,
        ledger=ledger,
        database_clock=database_clock,
    )
