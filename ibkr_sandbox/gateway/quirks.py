"""IBKR's inconsistent response shapes ("quirks"), applied when the sandbox is told to answer
in them."""

from __future__ import annotations

from typing import Any


def quirk_result(result: dict[str, Any]) -> dict[str, Any]:
    """IBKR's older result shape: `status` instead of `instructionStatus`, flat `code` and
    `description` instead of `error`, clientInstructionId as a numeric string."""
    out = dict(result)
    if "instructionStatus" in out:
        out["status"] = out.pop("instructionStatus")
    error = out.pop("error", None)
    if isinstance(error, dict):
        out["code"] = error.get("errorCode")
        out["description"] = error.get("errorMessage")
    if "clientInstructionId" in out:
        out["clientInstructionId"] = str(out["clientInstructionId"])
    return out


def quirk_body(body: Any) -> Any:
    """Apply the quirks to an envelope, a problem carrying a result, or a bulk/set body."""
    if not isinstance(body, dict):
        return body
    out = dict(body)
    if isinstance(out.get("instructionResult"), dict):
        out["instructionResult"] = quirk_result(out["instructionResult"])
        if out.get("status") in (403, 422) and "instructionSetId" in out:
            out["instructionSetId"] = str(out["instructionSetId"])
    if isinstance(out.get("instructionResults"), list):
        out["instructionResults"] = [quirk_body(item) for item in out["instructionResults"]]
    return out
