"""Assemble a process: database, IBKR client with the shared rate budget, tracking context."""

from __future__ import annotations

import os
import random
import socket
import uuid
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models import make_engine, make_session_factory
from models.db import database_time_reader
from worker.clock import Clock, DatabaseClock, SystemClock
from worker.config import Settings
from worker.ibkr.client import IbkrClient
from worker.ibkr.ratelimit import RateLimiter, SqlLedger
from worker.tracking.context import NullObserver, Observer, TrackingContext


@dataclass
class Runtime:
    """What one process holds: close it on the way out."""

    settings: Settings
    engine: Engine
    client: IbkrClient
    ctx: TrackingContext
    ledger_engine: Engine | None = None
    database_clock: DatabaseClock | None = None
    _writer_engine: Engine | None = None

    def writer_session_factory(self) -> sessionmaker[Session]:
        """Sessions for the process's group-commit writer (`tracking.group`): a connection of
        its own, not pinged before every transaction (a round trip per batch on the one thread
        all others wait for). A connection lost to a database restart fails that batch, whose
        steps then run alone on the runtime's pinged pool, and the writer's next batch
        connects afresh."""
        if self._writer_engine is None:
            self._writer_engine = make_engine(
                self.settings.database_url, pool_size=1, pre_ping=False
            )
        return make_session_factory(self._writer_engine)

    def close(self) -> None:
        self.client.close()
        self.client.rate_limiter.close()
        if self.database_clock is not None:
            self.database_clock.stop()
        self.engine.dispose()
        if self.ledger_engine is not None:
            self.ledger_engine.dispose()
        if self._writer_engine is not None:
            self._writer_engine.dispose()


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
    """Engine, IBKR client (rate budget shared through the database) and tracking context.

    Without `clock`, a process on PostgreSQL runs on the database's clock (`DatabaseClock`):
    leases, claims, due times and rate-limit slots are judged by one clock on every host.
    """
    engine = make_engine(settings.database_url, pool_size=pool_size)
    database_clock: DatabaseClock | None = None
    if clock is None:
        if engine.dialect.name == "postgresql":
            database_clock = DatabaseClock(database_time_reader(engine)).start()
            clock = database_clock
        else:
            clock = SystemClock()
    ledger_engine = SqlLedger.own_engine(settings.database_url)
    limiter = RateLimiter(
        SqlLedger(ledger_engine),
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
        session_factory=make_session_factory(engine),
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
        engine=engine,
        client=client,
        ctx=ctx,
        ledger_engine=ledger_engine,
        database_clock=database_clock,
    )
