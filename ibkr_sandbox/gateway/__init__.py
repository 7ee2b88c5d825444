"""What IBKR's gateway does around the Funds & Banking backend: rate limits (`limits`),
scheduled downtime and injected faults (`faults`), request statistics and arrivals (`stats`),
and IBKR's inconsistent response shapes (`quirks`). Each part has a lock of its own: they are
called from request handling on any thread, outside the ledger's lock."""

from ibkr_sandbox.gateway.faults import FAULT_HOLDS, FAULT_RATES, Downtime, Faults
from ibkr_sandbox.gateway.limits import RateLimiter, retry_after_header
from ibkr_sandbox.gateway.quirks import quirk_body, quirk_result
from ibkr_sandbox.gateway.stats import Arrival, Arrivals, Stats, max_in_window

__all__ = [
    "FAULT_HOLDS",
    "FAULT_RATES",
    "Arrival",
    "Arrivals",
    "Downtime",
    "Faults",
    "RateLimiter",
    "Stats",
    "max_in_window",
    "quirk_body",
    "quirk_result",
    "retry_after_header",
]
