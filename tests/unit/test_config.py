"""Settings read once, with one clear line for a setting that cannot work."""

from __future__ import annotations

import pytest

from worker.config import ConfigError, load_settings


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(env, dotenv=None)


def test_the_defaults_are_the_contracts() -> None:
    s = settings()
    assert (s.body_lifetime_s, s.inflight_horizon_s, s.max_clock_skew_s) == (300, 120, 30)
    assert s.max_message_bytes == 2 * 1024 * 1024 and s.metrics_host == "127.0.0.1"
    assert (s.http_timeout_s, s.lease_s, s.rate_limit_margin_s) == (30, 90, 0.15)


def test_the_new_settings_are_read() -> None:
    s = settings(
        IBKR_BODY_LIFETIME_S="60",
        IBKR_INFLIGHT_HORIZON_S="200",
        IBKR_MAX_CLOCK_SKEW_S="5",
        MAX_MESSAGE_BYTES="4096",
        METRICS_HOST="0.0.0.0",
    )
    assert (s.body_lifetime_s, s.inflight_horizon_s, s.max_clock_skew_s) == (60, 200, 5)
    assert (s.max_message_bytes, s.metrics_host) == (4096, "0.0.0.0")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"IBKR_LEASE_S": "60", "IBKR_HTTP_TIMEOUT_S": "30"}, "IBKR_LEASE_S"),
        ({"IBKR_HTTP_TIMEOUT_S": "50"}, "IBKR_LEASE_S"),
        ({"IBKR_RATE_LIMIT_MARGIN_S": "-0.1"}, "IBKR_RATE_LIMIT_MARGIN_S"),
        ({"IBKR_RATE_LIMIT_MARGIN_S": "1.5"}, "IBKR_RATE_LIMIT_MARGIN_S"),
        ({"MAX_MESSAGE_BYTES": str(21 * 1024 * 1024)}, "MAX_MESSAGE_BYTES"),
        ({"IBKR_MAX_CLOCK_SKEW_S": "-1"}, "IBKR_MAX_CLOCK_SKEW_S"),
        ({"IBKR_INFLIGHT_HORIZON_S": "0"}, "IBKR_INFLIGHT_HORIZON_S"),
        ({"IBKR_BODY_LIFETIME_S": "soon"}, "IBKR_BODY_LIFETIME_S"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_in_one_line(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings(**env)
    message = str(refused.value)
    assert named in message and "\n" not in message
