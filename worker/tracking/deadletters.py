"""Messages that could not be processed: their original bytes (for replay only), a view of
them for people, and the reason.

The view (`dead-letters list`, later the console) is the message as received with bank, broker
and tax account numbers masked (and secrets removed), truncated past 64 KiB, invalid UTF-8 and
NUL replaced; flags say which of these made it differ from the original. The original bytes
are kept apart (`dead_letter_originals`) and read only by replay, which sends them unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from worker import jsontext
from worker.config import KEPT_BODY_BYTES
from worker.inbound.arrival import Refused, parse_json
from worker.logging import get_logger
from worker.redaction import mask_bank_details, scrub_text
from worker.store import Store, Tx, deadletters
from worker.store.rows import DeadLetter

log = get_logger(__name__)
#: Longest view kept and shown, in bytes of UTF-8 (the contract's 64 KiB).
MAX_BODY_BYTES = KEPT_BODY_BYTES
MAX_REASON_CHARS = 4000
REPLACEMENT = "\ufffd"
_SCRUB_MARGIN_BYTES = 256


@dataclass(frozen=True)
class BodyView:
    """What people may see of a message: `text`, and why it is not the original."""

    text: str
    masked: bool
    truncated: bool
    replaced: bool

    @property
    def is_original(self) -> bool:
        return not (self.masked or self.truncated or self.replaced)

    @property
    def changes(self) -> list[str]:
        """`masked`, `truncated`, `replaced` (invalid UTF-8 or NUL), those that apply."""
        flags = {"masked": self.masked, "truncated": self.truncated, "replaced": self.replaced}
        return [name for name, applies in flags.items() if applies]


def body_view(raw: bytes, *, complete: bool = True) -> BodyView:
    """The view of a message's bytes `raw` (`complete`: all of it, else only its beginning).

    JSON within the edge's limits is masked field by field (and rewritten when anything was
    masked); anything else is scrubbed as text. Then NUL is replaced (PostgreSQL text cannot
    hold it) and the text cut at 64 KiB of UTF-8.
    """
    masked = replaced = False
    text: str | None = None
    if complete:
        try:
            data = parse_json(raw)
        except Refused:
            pass
        else:
            shown = mask_bank_details(data)
            if shown != data:
                text, masked = jsontext.dumps(shown), True
            else:
                text = raw.decode("utf-8")
    if text is None:
        # Only what is shown is scrubbed (a margin past the cut masks a number it splits):
        # scrubbing megabytes of text costs seconds.
        decoded, replaced = _decoded(raw[: MAX_BODY_BYTES + _SCRUB_MARGIN_BYTES], complete=False)
        if len(raw) <= MAX_BODY_BYTES + _SCRUB_MARGIN_BYTES:
            decoded, replaced = _decoded(raw, complete=complete)
        elif not replaced:
            replaced = _has_invalid_utf8(raw)
        text = scrub_text(decoded)
        masked = text != decoded
    if "\x00" in text:
        text, replaced = text.replace("\x00", REPLACEMENT), True
    encoded = text.encode("utf-8")
    truncated = not complete or len(encoded) > MAX_BODY_BYTES
    if len(encoded) > MAX_BODY_BYTES:
        text = encoded[:MAX_BODY_BYTES].decode("utf-8", "ignore")
    return BodyView(text, masked, truncated, replaced)


def _decoded(raw: bytes, *, complete: bool) -> tuple[str, bool]:
    """(text, whether invalid UTF-8 was replaced); the last character of a beginning may be
    cut in the middle, which is no replacement."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as error:
        if not complete and error.end == len(raw) and error.reason == "unexpected end of data":
            head, replaced = _decoded(raw[: error.start], complete=True)
            return head, replaced
        return raw.decode("utf-8", "replace"), True


def _has_invalid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def failure_key(message_id: str | None, raw: bytes) -> str:
    """The key of a message's failure count: its message id, or the digest of its bytes."""
    return message_id if message_id else "sha256:" + hashlib.sha256(raw).hexdigest()


def record_dead_letter(
    store: Store,
    *,
    body: bytes | str,
    reason: str,
    now: datetime,
    message_id: str | None = None,
    queue_name: str | None = None,
    received_bytes: int | None = None,
) -> int:
    """Store (or count again) a message that cannot be processed; returns its id.

    `body` is the message as received (a str is encoded as UTF-8), or only its beginning when
    `received_bytes` (its whole size) is larger: then the original is not kept and the letter
    cannot be replayed. The same message seen again (same message id, or none, and the same
    bytes) is counted on its letter.
    """
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogateescape")
    size = received_bytes if received_bytes is not None else len(raw)
    complete = size == len(raw)
    view = body_view(raw, complete=complete)
    digest = hashlib.sha256(raw).hexdigest()
    message_id = message_id or None
    reason = scrub_text(reason)[:MAX_REASON_CHARS].replace("\x00", REPLACEMENT)
    with store.transaction() as tx:
        existing = deadletters.same_letter(tx, message_id, digest, size)
        if existing is not None:
            existing.seen_count += 1
            existing.last_seen_at = now
            existing.reason = reason
            letter_id = existing.id
        else:
            letter = DeadLetter(
                message_id=message_id,
                queue_name=queue_name,
                body=view.text,
                body_size=size,
                truncated=view.truncated,
                body_masked=view.masked,
                body_replaced=view.replaced,
                original_kept=complete,
                body_sha256=digest,
                reason=reason,
                first_seen_at=now,
                last_seen_at=now,
            )
            letter_id = deadletters.add_letter(tx, letter, raw if complete else None)
    log.warning(
        "message set aside as a dead letter",
        dead_letter_id=letter_id,
        message_id=message_id,
        reason=reason,
        body_bytes=size,
    )
    return letter_id


@dataclass(frozen=True)
class Replay:
    """A dead letter to replay: its id, message id and original bytes."""

    letter: DeadLetter
    original: bytes


def letters_to_replay(tx: Tx, ids: Sequence[int]) -> list[Replay]:
    """The dead letters named by `ids`, in that order, with their original bytes; raises
    LookupError for unknown ids and ValueError for letters whose bytes were not kept (the
    message was larger than MAX_MESSAGE_BYTES)."""
    letters = deadletters.letters(tx, ids)
    missing = [str(i) for i in ids if i not in letters]
    if missing:
        raise LookupError(f"no dead letter with id {', '.join(missing)}")
    originals = deadletters.originals(tx, ids)
    not_kept = [str(i) for i in ids if i not in originals]
    if not_kept:
        raise ValueError(
            f"dead letter {', '.join(not_kept)} was not kept whole (larger than "
            "MAX_MESSAGE_BYTES when it arrived) and cannot be replayed; ask the producer to "
            "publish it again"
        )
    return [Replay(letters[i], bytes(originals[i])) for i in ids]


def mark_replayed(tx: Tx, replays: Sequence[Replay], now: datetime) -> None:
    """Count the replay on each letter and reset the failure count of its message (a replayed
    message starts with all its retries)."""
    keys = {failure_key(r.letter.message_id, r.original) for r in replays}
    keys |= {failure_key(None, r.original) for r in replays}
    deadletters.forget_failures(tx, sorted(keys))
    for replay in replays:
        replay.letter.replay_count += 1
        replay.letter.replayed_at = now
