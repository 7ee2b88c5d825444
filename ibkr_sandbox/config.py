"""The sandbox's switches. Every behaviour the reference marks UNCERTAIN or CONFLICT is one of
these, with the default the reference leans to."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

AudienceMode = Literal["any", "path", "url"]
DowntimeBehaviour = Literal["reject", "hold"]
DuplicateBehaviour = Literal["reject", "accept"]
AchOutcome = Literal["auto", "PROCESSED", "PENDING_VERIFICATION", "REJECTED"]


@dataclass(frozen=True)
class Timings:
    """Virtual-time delays of the state machines (reference §7.2), in seconds."""

    #: Internal cash 202s (and bulk items) are processed in batches on this period; an
    #: instruction joins the first batch at least one period after it arrived (so 30-60 s).
    internal_cash_batch_s: float = 30.0
    #: Position transfers: `position_batch_size` per window of this length (200 per 5 min).
    position_window_s: float = 300.0
    position_batch_size: int = 200
    #: ACH verification takes between these bounds (7-15 min), chosen per instruction from the seed.
    ach_min_s: float = 420.0
    ach_max_s: float = 900.0
    #: Micro-deposit confirmation (TRADITIONAL_BANK_INSTRUCTION_VERIFICATION) is checked after this.
    verification_s: float = 60.0
    #: Delete / predefined-destination bank instructions.
    bank_instruction_s: float = 60.0
    #: eDDA set-up.
    edda_s: float = 600.0
    #: Asynchronous queries (QUERY_RECENT_INSTRUCTIONS, QUERY_IRA_CONTRIBUTIONS) ("~1 minute").
    query_s: float = 60.0
    #: Withdrawals; 0 answers the 202 already PROCESSED (IBKR's withdrawal example does).
    withdrawal_s: float = 300.0
    #: FOP / DWAC / complex asset transfers.
    external_asset_s: float = 86_400.0
    #: ACATS / ATON full transfers (4-8 days).
    full_transfer_s: float = 4 * 86_400.0
    #: Deposits arrive on their own after this long; None waits for `deposit_arrived`.
    deposit_auto_arrival_s: float | None = None
    #: Internal cash 202s (the slow ones, bulk items, downtime holds) finish after a delay drawn
    #: per instruction from this (low, high) range, fixed by the seed and the instructionId,
    #: instead of at the next batch. None keeps the 30-60 s batches.
    internal_cash_async_delay_s: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        delay = self.internal_cash_async_delay_s
        if delay is not None:
            low, high = delay
            if not 0 <= low <= high:
                raise ValueError(
                    "internal_cash_async_delay_s must be (low, high) with 0 <= low <= high, "
                    f"got {delay}"
                )


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the sandbox can be told at start (faults can also change while it runs)."""

    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = 0
    #: Virtual seconds per real second (0 freezes the clock; tests then use `clock.advance`).
    speed: float = 1.0
    #: Seeds every pseudo-random choice (ACH delays, micro-deposit amounts, faults).
    seed: int = 7
    #: Virtual time at start (UTC); None is the real now.
    start_time: datetime | None = None

    # --- authentication -------------------------------------------------------------------
    #: Access-token lifetime; `expires_in` is one second less (IBKR: 86400 / 86399).
    token_lifetime_s: int = 86_400
    #: Which client-assertion `aud` is accepted (CONFLICT): "/token", the full token URL, or both.
    assertion_audience: AudienceMode = "any"
    #: Slack for `iat` in the future and `exp` just past, in real seconds.
    jwt_leeway_s: float = 30.0
    #: Longest accepted `exp - iat` of a client assertion (None: no limit).
    assertion_max_lifetime_s: float | None = 3600.0
    #: Status of a refused client assertion (bad signature, claims): 400 (IBKR's documented
    #: token errors) or 401 (UNCERTAIN).
    assertion_error_status: Literal[400, 401] = 400
    #: Status of a signed body that fails verification (signature, expiry, iss) (UNCERTAIN).
    body_jwt_error_status: Literal[400, 401] = 400
    #: Longest accepted `exp - iat` of a signed body (None: no limit) (UNCERTAIN).
    body_jwt_max_lifetime_s: float | None = None
    #: Whether the signed body's `iss` must be the token's client (UNCERTAIN; on by default).
    body_jwt_check_iss: bool = True
    #: Whether a signed body must come with `Content-Type: application/jwt` (UNCERTAIN).
    require_jwt_content_type: bool = True

    # --- behaviour switches -----------------------------------------------------------------
    #: Re-POST of a used clientInstructionId: "reject" (422 CORRUPT_DATA_DUBPLICATE_CP) or
    #: "accept" (a second transaction, applied: money moves again) (UNCERTAIN). Either way status
    #: GETs of the id then answer 208 with the first transaction. `Sandbox.set_duplicate_post`
    #: changes it at run time.
    duplicate_post: DuplicateBehaviour = "reject"
    #: Status a cancelled instruction ends in (UNCERTAIN; REJECTED is the only terminal
    #: non-success value of the enum).
    cancel_final_status: str = "REJECTED"
    #: HTTP status for an `instructions/query` over its throttle (UNCERTAIN): 429 or 422.
    query_throttle_status: Literal[429, 422] = 429
    #: At most one QUERY_RECENT_INSTRUCTIONS per this many virtual seconds per client.
    query_throttle_interval_s: float = 600.0
    #: Internal cash transfers strictly above this amount are "slow": 202 and batched.
    internal_cash_async_above: Decimal | None = None
    #: Every single internal cash transfer answers 202 and is batched.
    internal_cash_always_async: bool = False
    #: Outcome of every ACH instruction; "auto" follows the fixture rule (see fixtures.py).
    ach_outcome: AchOutcome = "auto"
    #: Failed micro-deposit confirmations before the ACH instruction is REJECTED.
    verification_attempts: int = 3
    #: Scheduled downtime calendar (America/New_York, reference §8.2). Off so tests and demos
    #: work on any day; `downtime_now` windows apply either way.
    downtime_calendar: bool = False
    #: Inside a downtime window: "reject" (503 problem) or "hold" (accept, keep PENDING until
    #: the window closes) (UNCERTAIN).
    downtime_behaviour: DowntimeBehaviour = "reject"
    #: v2 external asset transfers: where each position's quantity goes (UNCERTAIN): a
    #: `quantity` on every entry of `positions`, or one `quantity` on the instruction.
    v2_position_quantity: Literal["position", "instruction"] = "position"
    #: IBKR's inconsistent shapes: `status`/`code`/`description`, string instructionSetId in
    #: 403/422, numeric-string clientInstructionId.
    quirks: bool = False

    # --- limits ------------------------------------------------------------------------------
    rate_limits: bool = True
    #: Per client and endpoint, in any one-second window (real time).
    max_requests_per_second_per_endpoint: int = 10
    #: Per client, in any sixty-second window (real time).
    max_requests_per_minute: int = 600
    #: Request bodies above this are refused with 413 (IBKR: 20 MB).
    max_body_bytes: int = 20 * 1024 * 1024
    #: API withdrawals are capped at this many USD (IBKR: 100,000).
    max_withdrawal_usd: Decimal = Decimal("100000")
    #: Active bank instructions per account (IBKR: 6).
    max_bank_instructions: int = 6

    # --- faults (also changeable at run time through `Sandbox.set_faults`) ---------------------
    # Each rate is a share (0..1) drawn from the seeded generator per request.
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    #: Funds POSTs applied whose response is then lost (the connection closes without an answer).
    drop_response_rate: float = 0.0
    #: Funds POSTs held in flight: after the gateway's checks they wait `inflight_hold_s` real
    #: seconds BEFORE they register (status GETs answer 404 meanwhile), then register as a POST
    #: arriving at that moment would and answer whoever still listens.
    inflight_rate: float = 0.0
    inflight_hold_s: float = 40.0
    #: Whether a held POST's signed-body `exp` is checked again when it registers (UNCERTAIN;
    #: off is the worse branch: an expired body still registers).
    inflight_recheck_exp: bool = False
    #: Funds POSTs registered at once whose answer is written only `answer_delay_s` real seconds
    #: later (the client has usually given up by then).
    answer_delay_rate: float = 0.0
    answer_delay_s: float = 40.0
    #: In-process transport only: how long (real seconds) a caller waits for a held or delayed
    #: answer before it gets `httpx.ReadTimeout` (0: at once); None uses the request's own httpx
    #: read timeout, as a caller over a socket would.
    transport_read_timeout_s: float | None = 0.0

    # --- callbacks ---------------------------------------------------------------------------
    #: POST every status change, signed with the sandbox key, to this URL (None: off).
    callback_url: str | None = None

    timings: Timings = field(default_factory=Timings)
