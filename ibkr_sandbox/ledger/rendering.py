"""IBKR-shaped bodies of the sandbox's instructions: the `instructionResult` of one as it stands,
the envelopes around it (single, problem, bulk member), the details a PENDING answer carries,
and the results of the queries (withdrawable funds, bank instructions, recurring instructions,
history). Reads only; the ledger's lock guards what it reads (see
`ibkr_sandbox.ledger.ledger`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ibkr_sandbox import fixtures
from ibkr_sandbox.ledger.books import Books
from ibkr_sandbox.ledger.records import PENDING, PROCESSED, REJECTED, Instruction, Records
from worker.ibkr.calendar import EASTERN

QUERY_DESCRIPTION = (
    "Query is being processed. Please poll for status 1 minutes later using FB status endpoint. "
    "No new queries will be allowed before this one is processed"
)
BUSINESS_DETAIL = (
    "Funds and Banking server cannot process your request because it contains invalid data"
)
PERMISSION_DETAIL = "Permission denied- Insufficient rights for using resource"
#: How far back and how many rows QUERY_RECENT_INSTRUCTIONS answers at most.
HISTORY_MAX_DAYS, HISTORY_MAX_ROWS = 30, 100_000


def iso(ts: float) -> str:
    """POSIX seconds as ISO 8601 UTC (`2026-11-24T15:00:00Z`)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _eastern_request_date(ts: float) -> str:
    # IBKR's instructionHistory writes requestDate in Eastern time with an hour offset
    # ("2025-11-05T00:20:06-05").
    local = datetime.fromtimestamp(ts, UTC).astimezone(EASTERN)
    offset = local.utcoffset() or timedelta(0)
    hours = int(offset.total_seconds() // 3600)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{hours:+03d}"


def _masked(number: str) -> str:
    return "*****" + number[-4:] if number else ""


# --- one instruction ------------------------------------------------------------------------


def result(instruction: Instruction) -> dict[str, Any]:
    """The canonical `instructionResult` of `instruction` as it stands."""
    body: dict[str, Any] = dict(instruction.extra)
    body.update(
        {
            "clientInstructionId": instruction.client_instruction_id,
            "instructionType": instruction.instruction_type,
            "instructionStatus": instruction.status,
            "instructionId": instruction.instruction_id,
        }
    )
    if instruction.ib_reference_id is not None:
        body["ibReferenceId"] = instruction.ib_reference_id
    if instruction.description:
        body["description"] = instruction.description
    if instruction.error is not None:
        body["error"] = {"errorCode": instruction.error[0], "errorMessage": instruction.error[1]}
    if instruction.final_at is not None and instruction.status in (PROCESSED, REJECTED):
        body["processedTimestamp"] = iso(instruction.final_at)
    return body


def envelope(instruction: Instruction, status: int) -> dict[str, Any]:
    """`{status, instructionSetId, instructionResult}`."""
    return {
        "status": status,
        "instructionSetId": instruction.instruction_set_id,
        "instructionResult": result(instruction),
    }


def problem_envelope(instruction: Instruction) -> dict[str, Any]:
    """The 403/422 problem body carrying the rejected instruction."""
    forbidden = instruction.http_status == 403
    return {
        "type": "/simple",
        "title": "Forbidden" if forbidden else "Business Error",
        "status": instruction.http_status,
        "detail": PERMISSION_DETAIL if forbidden else BUSINESS_DETAIL,
        "instructionSetId": instruction.instruction_set_id,
        "instructionResult": result(instruction),
    }


def item_envelope(instruction: Instruction) -> dict[str, Any]:
    """One member of a bulk answer or of an instruction set."""
    if instruction.rejected_at_once:
        return problem_envelope(instruction)
    return envelope(instruction, instruction.http_status)


def bulk_body(status: int, instruction_set_id: int, members: list[Instruction]) -> dict[str, Any]:
    """A bulk answer or an instruction set: `{status, instructionSetId, instructionResults}`."""
    return {
        "status": status,
        "instructionSetId": instruction_set_id,
        "instructionResults": [item_envelope(member) for member in members],
    }


def describe_pending(instruction: Instruction) -> None:
    """Add what IBKR's PENDING answer carries for its type: a query's description and code,
    a deposit's details (and open-banking link), an open-banking instruction's link."""
    kind, item = instruction.instruction_type, instruction.request
    if kind in ("QUERY_RECENT_INSTRUCTIONS", "QUERY_IRA_CONTRIBUTIONS"):
        instruction.ib_reference_id = 0
        instruction.description = QUERY_DESCRIPTION
        if kind == "QUERY_RECENT_INSTRUCTIONS":
            instruction.extra["code"] = PENDING
        else:
            instruction.extra.update({"accountId": item["accountId"], "year": item["year"]})
    if kind == "DEPOSIT":
        details: dict[str, Any] = {
            "amount": item["amount"],
            "currency": item["currency"],
            "whenAvailable": datetime.fromtimestamp(instruction.created_at, UTC).date().isoformat(),
        }
        if "openBanking" in item:
            token = f"{instruction.instruction_id:x}"
            details["openBanking"] = {
                "serviceProvider": item["openBanking"]["serviceProvider"],
                "providerResponse": {
                    "paymentId": f"payment-sandbox-{token}",
                    "hostedlinkUrl": f"https://sandbox.invalid/link/{token}",
                    "linkToken": f"link-sandbox-{token}",
                },
            }
        instruction.extra["depositDetails"] = details
    if kind == "OPEN_BANKING_INSTRUCTION":
        token = f"{instruction.instruction_id:x}"
        instruction.extra["details"] = {
            "type": "OPEN_BANKING",
            "currency": item["currency"],
            "serviceProvider": item["serviceProvider"],
            "providerResponse": {
                "hostedlinkUrl": f"https://sandbox.invalid/link/{token}",
                "linkToken": f"link-sandbox-{token}",
            },
        }


# --- query results --------------------------------------------------------------------------


def query_result(
    instruction: Instruction, books: Books, records: Records, now: float
) -> dict[str, Any]:
    """The answer of a query instruction, from the books as they stand at `now` (virtual)."""
    kind, item = instruction.instruction_type, instruction.request
    account_id = str(item.get("accountId", ""))
    if kind in ("QUERY_WITHDRAWABLE_FUNDS", "QUERY_WITHDRAWABLE_CASH_EQUITY"):
        return _withdrawable(kind, item, account_id, books)
    if kind == "QUERY_BANK_INSTRUCTION":
        method = str(item["bankInstructionMethod"])
        wanted = {method, "ACH"} if method in ("USACH", "CAACH") else {method}
        details = [
            {
                "instructionName": saved.name,
                "type": saved.type,
                "currency": saved.currency,
                "instructionStatus": saved.status,
                "bankRoutingNumber": saved.routing_number,
                "bankAccountNumber": _masked(saved.account_number),
            }
            for saved in books.bank_instructions
            if saved.account_id == account_id and saved.method in wanted
        ]
        return {
            "accountId": account_id,
            "bankInstructionMethod": method,
            "bankInstructionDetails": details,
        }
    if kind == "QUERY_RECURRING_INSTRUCTIONS":
        return {"accountId": account_id, "recurringInstructions": books.recurring_of(account_id)}
    if kind == "QUERY_RECENT_RECURRING_EVENTS":
        events = dict(fixtures.RECURRING_EVENTS[int(item["ibReferenceId"])])
        limit = int(item.get("numberOfTransactions", 100))
        history = dict(events["transactionHistory"])
        history["result"] = list(history["result"])[:limit]
        events["transactionHistory"] = history
        return events
    if kind == "QUERY_IRA_CONTRIBUTIONS":
        return {
            "accountId": account_id,
            "year": item["year"],
            "iraType": books.accounts[account_id].ira_type,
            "contributions": fixtures.IRA_CONTRIBUTIONS.get(account_id, []),
        }
    if kind == "QUERY_RECENT_INSTRUCTIONS":
        return {"instructionHistory": _history(instruction, records, now)}
    return {}


def _withdrawable(kind: str, item: dict[str, Any], account_id: str, books: Books) -> dict[str, Any]:
    currency = str(item["currency"])
    amount = max(books.balance(account_id, currency), Decimal(0))
    if kind == "QUERY_WITHDRAWABLE_CASH_EQUITY":
        return {
            "accountId": account_id,
            "currency": currency,
            "withdrawableCashAmount": amount,
            "availableEquityValue": amount,
        }
    if "bankAccountNumber" in item:
        return {
            "accountId": account_id,
            "currency": currency,
            "withdrawableAmountWithoutOriginationHold": amount,
            "withdrawableAmountWithoutOriginationHoldNoBorrow": amount,
        }
    return {
        "accountId": account_id,
        "currency": currency,
        "withdrawableAmount": amount,
        "withdrawableAmountNoBorrow": amount,
        "allowedTransferAmountToMaster": amount,
        "allowedTransferAmountToMasterNoBorrow": amount,
    }


def _history(query: Instruction, records: Records, now: float) -> dict[str, Any]:
    detail = query.request["transactionHistory"]
    days = min(Decimal(detail["daysToGoBack"]), Decimal(HISTORY_MAX_DAYS))
    wanted = detail.get("transactionType", "ALL")
    since = now - float(days) * 86_400
    rows: list[dict[str, Any]] = []
    for iid in reversed(records.by_account.get(str(query.request["accountId"]), [])):
        other = records.instructions[iid]
        if other.counterparty != query.counterparty or other.created_at < since:
            continue
        if other.instruction_type.startswith("QUERY_"):
            continue
        if wanted != "ALL" and other.instruction_type != wanted:
            continue
        row: dict[str, Any] = {
            "clientInstructionId": other.client_instruction_id,
            "ibInstructionId": other.instruction_id,
            "instructionSetId": other.instruction_set_id,
            "instructionType": other.instruction_type,
            "requestDate": _eastern_request_date(other.created_at),
            "status": other.status,
        }
        if "amount" in other.request and "currency" in other.request:
            row["amount"] = other.request["amount"]
            row["currency"] = other.request["currency"]
        rows.append(row)
        if len(rows) >= HISTORY_MAX_ROWS:
            break
    return {
        "historyMaxDepthNumberOfDays": HISTORY_MAX_DAYS,
        "historyMaxDepthNumberOfInstruction": HISTORY_MAX_ROWS,
        "result": rows,
    }
