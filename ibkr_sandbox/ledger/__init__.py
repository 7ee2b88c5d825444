"""The sandbox's books and the state machines of its instructions, split by concern: `records`
(what an instruction is, where instructions are kept), `books` (accounts, cash, saved bank
instructions), `rules` (refusals and business checks), `lifecycle` (statuses over virtual
time), `rendering` (IBKR-shaped bodies), and `ledger`, the one door, whose lock guards them
all."""

from ibkr_sandbox.ledger.ledger import Ledger
from ibkr_sandbox.ledger.records import Instruction, QueryThrottled

__all__ = ["Instruction", "Ledger", "QueryThrottled"]
