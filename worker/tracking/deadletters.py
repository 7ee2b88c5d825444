"""Messages that could not be processed: kept with their raw body and the reason, for replay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import DeadLetter
from worker.logging import get_logger
from worker.redaction import scrub_text

log = get_logger(__name__)
MAX_BODY_BYTES = 64 * 1024


def record_dead_letter(
    session_factory: sessionmaker[Session],
    *,
    body: bytes | str,
    reason: str,
    now: datetime,
    message_id: str | None = None,
    queue_name: str | None = None,
) -> int:
    """Store (or count again, by message id) a message that cannot be processed; returns its id.

    The body is kept up to 64 KiB; longer bodies are truncated and flagged (and cannot be
    replayed from here).
    """
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogateescape")
    truncated = len(raw) > MAX_BODY_BYTES
    # PostgreSQL text cannot hold NUL: a body carrying one would fail to be recorded on every
    # attempt and block the drain behind it. Undecodable bytes are replaced the same way.
    text = raw[:MAX_BODY_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")
    reason = scrub_text(reason)[:4000].replace("\x00", "\ufffd")
    with session_factory.begin() as session:
        # The same message seen again (a replay that failed again, a redelivery) is counted on
        # its letter: by message id, or by its very body when it has none (undecodable).
        same = (
            DeadLetter.message_id == message_id
            if message_id is not None
            else DeadLetter.message_id.is_(None) & (DeadLetter.body == text)
        )
        existing = session.execute(
            select(DeadLetter).where(same).order_by(DeadLetter.id.desc()).limit(1)
        ).scalar_one_or_none()
        if existing is not None and existing.body == text:
            existing.seen_count += 1
            existing.last_seen_at = now
            existing.reason = reason
            letter_id = existing.id
        else:
            letter = DeadLetter(
                message_id=message_id,
                queue_name=queue_name,
                body=text,
                body_size=len(raw),
                truncated=truncated,
                reason=reason,
                first_seen_at=now,
                last_seen_at=now,
                seen_count=1,
                replay_count=0,
            )
            session.add(letter)
            session.flush()
            letter_id = letter.id
    log.warning(
        "message set aside as a dead letter",
        dead_letter_id=letter_id,
        message_id=message_id,
        reason=reason,
        body_bytes=len(raw),
    )
    return letter_id


def letters_to_replay(session: Session, ids: list[int]) -> list[DeadLetter]:
    """The dead letters named by `ids`, in that order; raises LookupError for unknown ids and
    ValueError for truncated bodies (which cannot be replayed faithfully)."""
    letters = {
        letter.id: letter
        for letter in session.execute(select(DeadLetter).where(DeadLetter.id.in_(ids))).scalars()
    }
    missing = [str(i) for i in ids if i not in letters]
    if missing:
        raise LookupError(f"no dead letter with id {', '.join(missing)}")
    truncated = [str(i) for i in ids if letters[i].truncated]
    if truncated:
        raise ValueError(
            f"dead letter {', '.join(truncated)} was truncated at 64 KiB and cannot be replayed; "
            "ask the producer to publish it again"
        )
    return [letters[i] for i in ids]
