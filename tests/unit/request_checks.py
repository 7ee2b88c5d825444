"""Checks shared by the request-validation tests."""

from __future__ import annotations

from typing import Any

import pytest

from worker.ibkr.requests import RequestValidationError, parse_request


def refusal(raw: Any) -> RequestValidationError:
    """The error `parse_request(raw)` raises: a refusal of the input, not an unexpected one."""
    with pytest.raises(RequestValidationError) as caught:
        parse_request(raw)
    assert not caught.value.unexpected, caught.value
    return caught.value
