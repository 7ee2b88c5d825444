"""The docs' tables are the code's: the polling profiles, the configuration settings with their
defaults, and the metrics served."""

from __future__ import annotations

import re

from tests.acceptance.docs import ROOT


def test_the_polling_table_is_the_code_s() -> None:
    from worker.config import PollOverrides
    from worker.tracking.backoff import DEFAULT_PROFILE, PROFILES, profile_for

    text = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    section = text.split("## Polling and deadlines", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # no header
    assert len(rows) >= 8, section
    units = {"s": 1, "min": 60, "h": 3600, "day": 86400, "days": 86400}

    def seconds(cell: str) -> float:
        number, unit = cell.split()
        return float(number) * units[unit]

    named: set[str] = set()
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        first, factor, slowest, overdue = (
            seconds(cells[1]),
            float(cells[2]),
            *map(seconds, cells[3:5]),
        )
        types = re.findall(r"`([A-Z_]+)`", cells[0])
        bulk = "(bulk" in cells[0]
        expected = (first, factor, slowest, overdue)
        for kind in types:
            named.add(kind)
            profile = profile_for(kind, PollOverrides(), bulk=bulk)
            actual = (
                profile.initial_delay_s,
                profile.factor,
                profile.max_delay_s,
                profile.deadline_s,
            )
            assert actual == expected, f"{kind}{' (bulk)' if bulk else ''}: {row}"
        if "any other type" in cells[0]:
            default = DEFAULT_PROFILE
            assert (
                default.initial_delay_s,
                default.factor,
                default.max_delay_s,
                default.deadline_s,
            ) == expected, row
    assert set(PROFILES) <= named, f"types missing from the table: {set(PROFILES) - named}"


def test_the_configuration_table_is_the_code_s() -> None:
    from worker.config import load_settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([A-Z_0-9]+)` \| ([^|]+) \|", readme, flags=re.M))
    source = (ROOT / "worker" / "config.py").read_text(encoding="utf-8")
    read = set(re.findall(r'env(?:\.get)?\(\s*"([A-Z_0-9]+)"', source))
    read |= set(re.findall(r'_(?:int|float|bool|url)\(\s*env,\s*"([A-Z_0-9]+)"', source))
    assert read, "no settings found in worker/config.py"
    assert read <= set(table), f"settings missing from the README table: {read - set(table)}"
    settings = load_settings({}, dotenv=None)
    attributes = {
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "IBKR_BASE_URL": settings.ibkr_base_url,
        "IBKR_SCOPE": settings.ibkr_scope,
        "IBKR_ASSERTION_AUDIENCE": settings.ibkr_assertion_audience,
        "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT": settings.max_requests_per_second_per_endpoint,
        "IBKR_MAX_REQUESTS_PER_MINUTE": settings.max_requests_per_minute,
        "IBKR_HONOR_DOWNTIME": settings.honor_downtime,
        "CLIENT_INSTRUCTION_ID_START": settings.client_instruction_id_start,
        "LOG_LEVEL": settings.log_level,
        "LOG_FORMAT": settings.log_format,
        "IBKR_HTTP_TIMEOUT_S": settings.http_timeout_s,
        "IBKR_RATE_LIMIT_MARGIN_S": settings.rate_limit_margin_s,
        "IBKR_LEASE_S": settings.lease_s,
    }
    for name, value in attributes.items():
        shown = table[name].strip().strip("`")
        if isinstance(value, bool):
            assert shown == str(value).lower(), name
        elif isinstance(value, int | float):
            assert float(shown) == value, name
        else:
            assert shown == value, name
    token_default = table["IBKR_TOKEN_URL"].strip().strip("`")
    assert token_default.format(IBKR_BASE_URL=settings.ibkr_base_url) == settings.ibkr_token_url
    for unset in ("IBKR_CLIENT_ID", "IBKR_KEY_ID", "IBKR_PRIVATE_KEY_FILE", "METRICS_PORT"):
        assert table[unset].startswith(("none", "unset")), unset


def test_the_metrics_named_in_operating_md_are_the_ones_served(sqlite_url: str) -> None:
    from worker.metrics import Metrics
    from worker.store import Store

    metrics = Metrics()
    store = Store.connect(sqlite_url)
    metrics.watch_database(store)
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
    }
    store.close()
    text = (ROOT / "docs" / "operating.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `(ibkr_[a-z_]+)", section, flags=re.M))
    assert table == served, f"documented only: {table - served}; served only: {served - table}"
    mentioned = set(re.findall(r"\bibkr_[a-z_]+", section))
    assert mentioned <= served, f"unknown metrics in operating.md: {mentioned - served}"
