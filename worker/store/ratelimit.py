"""The rate-limit rings in the database, shared by every process using it (see
`worker.ibkr.ratelimit` for the limiter they serve)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Connection, Engine, event, select, tuple_, update
from sqlalchemy.dialects import sqlite

from models.db import make_engine
from models.tables import RateLimitBucket, RateLimitGrant
from worker.ibkr.ratelimit import (
    BucketState,
    Now,
    WindowLimit,
    grant_batch,
    positions_needed,
    read_now,
)
from worker.store.errors import translated


class SqlLedger:
    """Rings in `rate_limit_buckets` / `rate_limit_grants`, shared by every process using the
    database.

    A batch locks its buckets' rows (PostgreSQL `FOR UPDATE`, in name order so that two
    processes never deadlock; SQLite engines from `models.db.make_engine` begin with
    `BEGIN IMMEDIATE`, which serialises writers), reads the ring positions it overwrites,
    and writes them back: on PostgreSQL one call of the database's `rate_limit_grant` (one
    round trip), whatever the limits and the batch. The engine should be the
    ledger's own (one connection); on PostgreSQL its transactions commit with
    `synchronous_commit = off` (see `own_engine`).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._known_buckets: set[str] = set()

    @staticmethod
    def own_engine(url: str) -> Engine:
        """An engine for the ledger alone: one connection, not pinged (a lost connection fails
        one batch, whose callers treat it as "no slot"), and on PostgreSQL commits that do not
        wait for the write-ahead log to reach the disk. A database crash may then forget the
        last few milliseconds of grants: their requests have left already and IBKR counts them,
        so the next grants after a restart may come a little early. That window is smaller than
        the margin, and a crash of the database stops the worker anyway; a synchronous commit
        would cost every batch a disk flush."""
        engine = make_engine(url, pool_size=1, pre_ping=False)
        if engine.dialect.name == "postgresql":
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")

            @event.listens_for(engine, "connect")
            def _asynchronous_commit(dbapi_connection: object, _record: object) -> None:
                cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
                cursor.execute("SET synchronous_commit = off")
                cursor.close()
                dbapi_connection.commit()  # type: ignore[attr-defined]

        return engine

    @classmethod
    def own(cls, url: str) -> SqlLedger:
        """A ledger on an engine of its own (`own_engine`); `close` disposes of it."""
        return cls(cls.own_engine(url))

    def close(self) -> None:
        self._engine.dispose()

    def reserve_batch(
        self,
        batch: Sequence[Sequence[WindowLimit]],
        now: Now,
        latest: Sequence[float | None] | None = None,
    ) -> list[float]:
        """Grant one slot per entry of `batch` (all of one client), in order; refusals as in
        `grant_batch`. Database errors leave as the store's (`worker.store.errors`)."""
        with translated():
            return self._reserve_batch(batch, now, latest)

    def _reserve_batch(
        self,
        batch: Sequence[Sequence[WindowLimit]],
        now: Now,
        latest: Sequence[float | None] | None = None,
    ) -> list[float]:
        limits_by_bucket: dict[str, WindowLimit] = {}
        counts: dict[str, int] = defaultdict(int)
        for limits in batch:
            for limit in limits:
                limits_by_bucket[limit.bucket] = limit
                counts[limit.bucket] += 1
        names = sorted(limits_by_bucket)
        if self._postgres:
            return self._reserve_postgresql(batch, names, limits_by_bucket, now, latest)
        with self._engine.begin() as connection:
            unknown = [name for name in names if name not in self._known_buckets]
            if unknown:
                connection.execute(
                    sqlite.insert(RateLimitBucket)
                    .values([{"bucket": name, "granted": 0, "last_at": 0.0} for name in unknown])
                    .on_conflict_do_nothing(index_elements=["bucket"])
                )
            states = self._read_portable(connection, names, limits_by_bucket, counts)
            before = {name: state.granted for name, state in states.items()}
            grants = grant_batch(read_now(now), batch, states, latest)
            written = [
                (name, position, states[name].ring[position])
                for name in names
                for position in positions_needed(
                    limits_by_bucket[name].limit,
                    before[name],
                    states[name].granted - before[name],
                )
            ]
            self._write_portable(connection, written, [(name, states[name]) for name in names])
        self._known_buckets.update(names)
        return grants

    # PostgreSQL: the database's `rate_limit_grant` function (migration 0002) does the same in
    # one round trip: it locks the rings, reads each position it replaces and writes the
    # grants, in a transaction of its own (the engine is in autocommit).

    _GRANT = (
        "SELECT rate_limit_grant(%(buckets)s::text[], %(limits)s::int[], %(windows)s::float8[],"
        " %(calls)s::int[], %(width)s, %(now)s, %(latest)s::float8[])"
    )

    def _reserve_postgresql(
        self,
        batch: Sequence[Sequence[WindowLimit]],
        names: list[str],
        limits_by_bucket: dict[str, WindowLimit],
        now: Now,
        latest: Sequence[float | None] | None,
    ) -> list[float]:
        index = {name: position + 1 for position, name in enumerate(names)}
        width = max((len(limits) for limits in batch), default=1) or 1
        calls: list[int] = []
        for limits in batch:
            row = [index[limit.bucket] for limit in limits]
            calls.extend(row + [0] * (width - len(row)))
        parameters = {
            "buckets": names,
            "limits": [limits_by_bucket[name].limit for name in names],
            "windows": [limits_by_bucket[name].window_s for name in names],
            "calls": calls,
            "width": width,
            "now": read_now(now),
            "latest": list(latest) if latest is not None else [None] * len(batch),
        }
        with self._engine.connect() as connection:
            grants = connection.exec_driver_sql(self._GRANT, parameters).scalar_one()
        return [float(grant) for grant in grants]

    # SQLite (one host, one writer at a time under BEGIN IMMEDIATE): SQLAlchemy Core.

    def _read_portable(
        self,
        connection: Connection,
        names: list[str],
        limits_by_bucket: dict[str, WindowLimit],
        counts: dict[str, int],
    ) -> dict[str, BucketState]:
        states = {
            name: BucketState(granted=int(granted), last_at=float(last_at))
            for name, granted, last_at in connection.execute(
                select(RateLimitBucket.bucket, RateLimitBucket.granted, RateLimitBucket.last_at)
                .where(RateLimitBucket.bucket.in_(names))
                .order_by(RateLimitBucket.bucket)
            )
        }
        wanted = [
            (name, position)
            for name in names
            for position in positions_needed(
                limits_by_bucket[name].limit, states[name].granted, counts[name]
            )
        ]
        for name, position, granted_at in connection.execute(
            select(RateLimitGrant.bucket, RateLimitGrant.position, RateLimitGrant.granted_at).where(
                tuple_(RateLimitGrant.bucket, RateLimitGrant.position).in_(wanted)
            )
        ):
            states[name].ring[int(position)] = float(granted_at)
        return states

    def _write_portable(
        self,
        connection: Connection,
        written: list[tuple[str, int, float]],
        buckets: list[tuple[str, BucketState]],
    ) -> None:
        upsert = sqlite.insert(RateLimitGrant).values(
            [{"bucket": b, "position": p, "granted_at": t} for b, p, t in written]
        )
        connection.execute(
            upsert.on_conflict_do_update(
                index_elements=["bucket", "position"],
                set_={"granted_at": upsert.excluded.granted_at},
            )
        )
        for name, state in buckets:
            connection.execute(
                update(RateLimitBucket)
                .where(RateLimitBucket.bucket == name)
                .values(granted=state.granted, last_at=state.last_at)
            )
