"""Status, audit-trail and dead-letter queries return exactly the right rows on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models import (
    AuditEvent,
    ClientInstruction,
    DeadLetter,
    Submission,
    make_engine,
    make_session_factory,
)
from worker.audit import (
    audit_trail,
    find_status,
    find_statuses_by_message_id,
    list_dead_letters,
)
from worker.store import Store, Tx

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Tx]:
    """A store transaction on the database the sessions seed."""
    store = Store(sessions.kw["bind"])
    with store.transaction() as tx:
        yield tx


@pytest.fixture(params=["pg_url", "sqlite_url"])
def sessions(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """A session factory on a migrated database of each kind."""
    engine = make_engine(request.getfixturevalue(request.param))
    yield make_session_factory(engine)
    engine.dispose()


def _instruction(client_instruction_id: int, **fields: Any) -> ClientInstruction:
    values: dict[str, Any] = {
        "client_instruction_id": client_instruction_id,
        "instruction_type": "INTERNAL_CASH_TRANSFER",
        "status": "RECEIVED",
        "account_id": "U46377",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return ClientInstruction(**values)


def _submission(message_id: str, **fields: Any) -> Submission:
    values: dict[str, Any] = {
        "message_id": message_id,
        "instruction_type": "INTERNAL_CASH_TRANSFER",
        "is_bulk": True,
        "endpoint_path": "/gw/api/v1/instructions:bulk",
        "request_json": "{}",
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Submission(**values)


# --- find_status ------------------------------------------------------------------------------


def test_status_by_client_instruction_id_prefers_the_owning_row(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        owner = _instruction(1012983, status="PROCESSED", instruction_id=45123654)
        session.add(owner)
        session.flush()
        session.add(_instruction(1012983, status="FAILED", duplicate_of_id=owner.id))
        session.add(_instruction(555, status="PENDING"))

    with reading(sessions) as tx:
        state = find_status(tx, client_instruction_id=1012983)

    assert state is not None
    assert (state["clientInstructionId"], state["status"], state["instructionId"]) == (
        1012983,
        "PROCESSED",
        45123654,
    )
    assert state["createdAt"] == "2026-11-24T10:00:00Z"


def test_status_without_an_owning_row_is_the_newest_row(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        other = _instruction(1)
        session.add(other)
        session.flush()
        session.add(_instruction(77, status="FAILED", error_code="A", duplicate_of_id=other.id))
        session.add(_instruction(77, status="FAILED", error_code="B", duplicate_of_id=other.id))

    with reading(sessions) as tx:
        state = find_status(tx, client_instruction_id=77)

    assert state is not None
    assert state["error"] == {"code": "B", "message": None}


def test_status_of_an_unknown_id_is_none(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.add(_instruction(1))

    with reading(sessions) as tx:
        assert find_status(tx, client_instruction_id=2) is None
        assert find_status(tx, message_id="nope") is None
        assert find_statuses_by_message_id(tx, "nope") == []


def test_status_needs_exactly_one_key(sessions: sessionmaker[Session]) -> None:
    with reading(sessions) as tx:
        with pytest.raises(ValueError, match="exactly one"):
            find_status(tx)
        with pytest.raises(ValueError, match="exactly one"):
            find_status(tx, client_instruction_id=1, message_id="m")


def test_status_by_message_id_lists_every_bulk_member_in_request_order(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        bulk = _submission("msg-bulk")
        other = _submission("msg-other")
        session.add_all([bulk, other])
        session.flush()
        # Inserted out of order: the request order (position) is what counts.
        session.add(_instruction(12, submission_id=bulk.id, position=2))
        session.add(_instruction(10, submission_id=bulk.id, position=0))
        session.add(_instruction(11, submission_id=bulk.id, position=1))
        session.add(_instruction(20, submission_id=other.id, position=0))

    with reading(sessions) as tx:
        states = find_statuses_by_message_id(tx, "msg-bulk")
        first = find_status(tx, message_id="msg-bulk")

    assert [state["clientInstructionId"] for state in states] == [10, 11, 12]
    assert first is not None and first["clientInstructionId"] == 10


def test_status_by_message_id_finds_rows_that_carry_it_without_a_submission(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        session.add(_instruction(30, message_id="msg-single", status="FAILED"))
        session.add(_instruction(31, message_id="msg-else"))

    with reading(sessions) as tx:
        states = find_statuses_by_message_id(tx, "msg-single")

    assert [(state["clientInstructionId"], state["status"]) for state in states] == [(30, "FAILED")]


# --- audit_trail ------------------------------------------------------------------------------


def _event(minute: int, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "at": T0 + timedelta(minutes=minute),
        "reason": f"event at minute {minute}",
        "actor": "worker",
    }
    values.update(fields)
    return AuditEvent(**values)


@pytest.fixture
def trail(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Two instructions' events, interleaved, plus one unrelated event."""
    with sessions.begin() as session:
        session.add_all(
            [
                _event(
                    0,
                    client_instruction_id=1,
                    account_id="U1",
                    correlation_id="c-1",
                    to_status="RECEIVED",
                ),
                _event(
                    1,
                    client_instruction_id=2,
                    account_id="U2",
                    correlation_id="c-2",
                    to_status="RECEIVED",
                ),
                _event(
                    2,
                    client_instruction_id=1,
                    instruction_id=501,
                    instruction_set_id=90,
                    account_id="U1",
                    correlation_id="c-1",
                    from_status="RECEIVED",
                    to_status="PENDING",
                    api_method="POST",
                    api_path="/gw/api/v1/instructions",
                    api_http_status=202,
                    api_latency_ms=12.5,
                ),
                _event(
                    3,
                    client_instruction_id=2,
                    instruction_id=502,
                    instruction_set_id=90,
                    account_id="U2",
                    correlation_id="c-2",
                    from_status="RECEIVED",
                    to_status="PENDING",
                ),
                _event(
                    4,
                    client_instruction_id=1,
                    instruction_id=501,
                    instruction_set_id=90,
                    account_id="U1",
                    correlation_id="c-1",
                    from_status="PENDING",
                    to_status="PROCESSED",
                ),
                _event(5, client_instruction_id=3, account_id="U3", to_status="RECEIVED"),
            ]
        )
    return sessions


def _minutes(events: list[dict[str, Any]]) -> list[int]:
    return [int(event["reason"].rsplit(" ", 1)[1]) for event in events]


@pytest.mark.parametrize(
    ("filters", "expected_minutes"),
    [
        ({"client_instruction_id": 1}, [0, 2, 4]),
        ({"client_instruction_id": 2}, [1, 3]),
        ({"instruction_id": 501}, [2, 4]),
        ({"instruction_set_id": 90}, [2, 3, 4]),
        ({"account_id": "U2"}, [1, 3]),
        ({"correlation_id": "c-1"}, [0, 2, 4]),
        ({"client_instruction_id": 1, "instruction_id": 501}, [2, 4]),
        ({"account_id": "U1", "correlation_id": "c-2"}, []),
        ({"client_instruction_id": 404}, []),
        ({}, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_audit_filters_return_exactly_the_matching_events_oldest_first(
    trail: sessionmaker[Session], filters: dict[str, Any], expected_minutes: list[int]
) -> None:
    with reading(trail) as tx:
        events = audit_trail(tx, **filters)

    assert _minutes(events) == expected_minutes


def test_audit_since_is_inclusive_and_until_exclusive(trail: sessionmaker[Session]) -> None:
    with reading(trail) as tx:
        window = audit_trail(tx, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=4))
        since_only = audit_trail(tx, since=T0 + timedelta(minutes=4))
        until_only = audit_trail(tx, until=T0 + timedelta(minutes=1))
        keyed = audit_trail(
            tx,
            client_instruction_id=1,
            since=T0 + timedelta(minutes=2),
            until=T0 + timedelta(minutes=4),
        )

    assert _minutes(window) == [1, 2, 3]
    assert _minutes(since_only) == [4, 5]
    assert _minutes(until_only) == [0]
    assert _minutes(keyed) == [2]


def test_audit_times_in_other_zones_and_naive_times_mean_the_same_instant(
    trail: sessionmaker[Session],
) -> None:
    paris = timezone(timedelta(hours=1))
    with reading(trail) as tx:
        aware = audit_trail(tx, since=datetime(2026, 11, 24, 11, 3, tzinfo=paris))
        naive = audit_trail(tx, since=datetime(2026, 11, 24, 10, 3))

    assert _minutes(aware) == _minutes(naive) == [3, 4, 5]


def test_audit_limit_keeps_the_oldest(trail: sessionmaker[Session]) -> None:
    with reading(trail) as tx:
        first_two = audit_trail(tx, limit=2)
        keyed = audit_trail(tx, client_instruction_id=1, limit=1)
        timed = audit_trail(tx, since=T0 + timedelta(minutes=2), limit=2)
        with pytest.raises(ValueError, match="limit"):
            audit_trail(tx, limit=0)

    assert _minutes(first_two) == [0, 1]
    assert _minutes(keyed) == [0]
    assert _minutes(timed) == [2, 3]


def test_audit_events_have_exactly_the_contract_shape(trail: sessionmaker[Session]) -> None:
    with reading(trail) as tx:
        events = audit_trail(tx, client_instruction_id=1)

    assert events[1] == {
        "at": "2026-11-24T10:02:00Z",
        "clientInstructionId": 1,
        "instructionId": 501,
        "instructionSetId": 90,
        "fromStatus": "RECEIVED",
        "toStatus": "PENDING",
        "reason": "event at minute 2",
        "actor": "worker",
        "api": {
            "method": "POST",
            "path": "/gw/api/v1/instructions",
            "httpStatus": 202,
            "latencyMs": 12.5,
        },
    }
    assert events[0]["api"] is None
    assert events[0]["fromStatus"] is None


def test_audit_time_range_alone_is_ordered_by_time(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        # Recorded out of time order (a worker whose clock lags): the time range reads by time.
        session.add(_event(5, client_instruction_id=1))
        session.add(_event(3, client_instruction_id=2))

    with reading(sessions) as tx:
        by_time = audit_trail(tx, since=T0)
        by_record = audit_trail(tx, client_instruction_id=1) + audit_trail(
            tx, client_instruction_id=2
        )

    assert _minutes(by_time) == [3, 5]
    assert _minutes(by_record) == [5, 3]


# --- dead letters -----------------------------------------------------------------------------


def test_dead_letters_are_listed_oldest_first_with_their_details(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        for number in range(3):
            session.add(
                DeadLetter(
                    message_id=f"m-{number}" if number else None,
                    queue_name="ibkr.instructions",
                    body=f"not json {number}",
                    body_size=10,
                    truncated=False,
                    reason="body is not JSON",
                    first_seen_at=T0 + timedelta(minutes=number),
                    last_seen_at=T0 + timedelta(minutes=number, seconds=30),
                    seen_count=1,
                    replay_count=number,
                )
            )

    with reading(sessions) as tx:
        letters = list_dead_letters(tx)
        first_two = list_dead_letters(tx, limit=2)

    assert [letter["body"] for letter in letters] == ["not json 0", "not json 1", "not json 2"]
    assert [letter["id"] for letter in first_two] == [letter["id"] for letter in letters[:2]]
    assert letters[1] == {
        "id": letters[1]["id"],
        "messageId": "m-1",
        "queueName": "ibkr.instructions",
        "body": "not json 1",
        "bodySize": 10,
        "truncated": False,
        "bodyIsOriginal": True,
        "bodyChanges": [],
        "replayable": False,
        "reason": "body is not JSON",
        "seenAt": "2026-11-24T10:01:00Z",
        "lastSeenAt": "2026-11-24T10:01:30Z",
        "seenCount": 1,
        "replayCount": 1,
        "replayedAt": None,
    }
    assert letters[0]["messageId"] is None


def test_no_dead_letters_is_an_empty_list(sessions: sessionmaker[Session]) -> None:
    with reading(sessions) as tx:
        assert list_dead_letters(tx) == []
