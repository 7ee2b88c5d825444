"""Pure: when to look at an instruction next, and when it becomes overdue.

Cadences come from IBKR's timings (reference §7.2): internal cash transfers finish in seconds
(bulk ones at the next 30-60 s batch), ACH verification takes 7-15 minutes, deposits and
position transfers take days and are looked at every 10 minutes, queries answer after about a
minute. "Still pending" never consumes an error budget; errors back off on their own curve.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from worker.config import PollOverrides

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


@dataclass(frozen=True)
class PollProfile:
    """Backoff of one instruction type: first look after `initial_delay_s`, each later delay
    `factor` times the previous, at most `max_delay_s`; overdue `deadline_s` after submission."""

    initial_delay_s: float
    factor: float
    max_delay_s: float
    deadline_s: float


_FAST = PollProfile(initial_delay_s=3.0, factor=1.6, max_delay_s=60.0, deadline_s=2 * HOUR)
_BATCHED = PollProfile(initial_delay_s=30.0, factor=1.25, max_delay_s=60.0, deadline_s=2 * HOUR)
_QUERY = PollProfile(initial_delay_s=60.0, factor=1.5, max_delay_s=2 * MINUTE, deadline_s=HOUR)
_BANK = PollProfile(initial_delay_s=MINUTE, factor=2.0, max_delay_s=10 * MINUTE, deadline_s=DAY)
_DAYS = PollProfile(initial_delay_s=MINUTE, factor=2.0, max_delay_s=10 * MINUTE, deadline_s=5 * DAY)

PROFILES: dict[str, PollProfile] = {
    "INTERNAL_CASH_TRANSFER": _FAST,
    "CANCEL_INSTRUCTION": _FAST,
    "INTERNAL_POSITION_TRANSFER": replace(_DAYS, initial_delay_s=MINUTE, deadline_s=DAY),
    "DEPOSIT": _DAYS,
    "WITHDRAWAL": _DAYS,
    # ACH ownership verification takes 7-15 minutes; micro-deposits then take 1-3 business days
    # and the user's confirmation may take longer still.
    "ACH_INSTRUCTION": PollProfile(
        initial_delay_s=7 * MINUTE, factor=1.5, max_delay_s=10 * MINUTE, deadline_s=7 * DAY
    ),
    "TRADITIONAL_BANK_INSTRUCTION_VERIFICATION": replace(_BANK, initial_delay_s=30.0),
    "DELETE_BANK_INSTRUCTION": _BANK,
    "PREDEFINED_DESTINATION_INSTRUCTION": _BANK,
    "EDDA_INSTRUCTION": _BANK,
    "OPEN_BANKING_INSTRUCTION": _BANK,
    "WITHDRAWAL_INSTRUCTION": _BANK,
    "FOP": replace(_DAYS, initial_delay_s=5 * MINUTE, deadline_s=8 * DAY),
    "DWAC": replace(_DAYS, initial_delay_s=5 * MINUTE, deadline_s=8 * DAY),
    "COMPLEX_ASSET_TRANSFER": replace(_DAYS, initial_delay_s=5 * MINUTE, deadline_s=8 * DAY),
    # ACATS 4-8 days, ATON 3-8 business days.
    "EXTERNAL_POSITION_TRANSFER": replace(_DAYS, initial_delay_s=10 * MINUTE, deadline_s=12 * DAY),
    "QUERY_RECENT_INSTRUCTIONS": _QUERY,
    "QUERY_IRA_CONTRIBUTIONS": _QUERY,
    "QUERY_WITHDRAWABLE_FUNDS": _QUERY,
    "QUERY_WITHDRAWABLE_CASH_EQUITY": _QUERY,
    "QUERY_BANK_INSTRUCTION": _QUERY,
    "QUERY_RECURRING_INSTRUCTIONS": _QUERY,
    "QUERY_RECENT_RECURRING_EVENTS": _QUERY,
}
DEFAULT_PROFILE = _BANK

# Errors (429, 5xx, lost answers) back off on their own curve, independent of the type.
ERROR_INITIAL_DELAY_S = 2.0
ERROR_FACTOR = 2.0
ERROR_MAX_DELAY_S = 5 * MINUTE
# A lost POST answer is resolved quickly: IBKR answers every POST within about 30 s.
RESOLVE_DELAY_S = 2.0
JITTER_FRACTION = 0.1


def profile_for(
    instruction_type: str, overrides: PollOverrides, *, bulk: bool = False
) -> PollProfile:
    """The poll profile of a type (bulk internal transfers follow IBKR's 30-60 s batches),
    with the global POLL_* overrides applied."""
    profile = PROFILES.get(instruction_type, DEFAULT_PROFILE)
    if bulk and instruction_type == "INTERNAL_CASH_TRANSFER":
        profile = _BATCHED
    return PollProfile(
        initial_delay_s=overrides.initial_delay_s or profile.initial_delay_s,
        factor=overrides.backoff_factor or profile.factor,
        max_delay_s=overrides.max_delay_s or profile.max_delay_s,
        deadline_s=overrides.deadline_s or profile.deadline_s,
    )


def jittered(delay_s: float, rng: random.Random, fraction: float = JITTER_FRACTION) -> float:
    """`delay_s` spread by ±`fraction` so that rows scheduled together do not poll together."""
    return max(0.0, delay_s * (1.0 + rng.uniform(-fraction, fraction)))


def pending_delay_s(profile: PollProfile, poll_count: int, *, overdue: bool = False) -> float:
    """Seconds until the next look at a still-pending instruction after `poll_count` looks.

    Overdue instructions are looked at on the slowest cadence (`max_delay_s`).
    """
    if overdue:
        return profile.max_delay_s
    delay = profile.initial_delay_s * profile.factor ** max(poll_count, 0)
    return min(delay, profile.max_delay_s)


def error_delay_s(error_count: int, retry_after_s: float | None = None) -> float:
    """Seconds until retrying after the `error_count`-th consecutive error (1 = first).

    IBKR's Retry-After wins when it asks for longer.
    """
    delay = ERROR_INITIAL_DELAY_S * ERROR_FACTOR ** max(error_count - 1, 0)
    delay = min(delay, ERROR_MAX_DELAY_S)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def deadline_at(
    submitted_at: datetime, profile: PollProfile, scheduled_for: datetime | None
) -> datetime:
    """When an instruction becomes overdue: `deadline_s` after submission, or after the date a
    scheduled instruction (`dateTimeToOccur`) is due, whichever is later."""
    start = submitted_at if scheduled_for is None else max(submitted_at, scheduled_for)
    return start + timedelta(seconds=profile.deadline_s)
