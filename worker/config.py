"""Settings, read once at process start into an immutable object that is passed down.

Nothing in the package reads the environment at import time; :func:`load_settings` is called by
the command-line entry points (and by tests with an explicit mapping).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_SCOPE = (
    "transfers.read transfers.write bank-instructions.read bank-instructions.write "
    "instructions.read instructions.write balances.read enumerations.read"
)


#: IBKR's own limit for one request (reference 8.3): MAX_MESSAGE_BYTES may not exceed it.
MAX_MESSAGE_BYTES_CEILING = 20 * 1024 * 1024
#: The contract's 64 KiB: the most of a message's body kept for people to read (a dead
#: letter's view, the stored body of a request that cannot be sent).
KEPT_BODY_BYTES = 64 * 1024
#: How long a claimed row stays with its process unless IBKR_LEASE_S says otherwise; a crashed
#: holder's rows wait this long before another process takes them over.
DEFAULT_LEASE_S = 90.0


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names it in one line."""


@dataclass(frozen=True)
class PollOverrides:
    """Global overrides of the per-type poll backoff (None: use the per-type table)."""

    initial_delay_s: float | None = None
    max_delay_s: float | None = None
    backoff_factor: float | None = None
    deadline_s: float | None = None


@dataclass(frozen=True)
class Settings:
    """Every setting of the product (the contract's environment variables)."""

    database_url: str = "sqlite:///ibkr_worker.db"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    ibkr_base_url: str = "https://api.ibkr.com"
    ibkr_token_url: str = ""
    ibkr_client_id: str | None = None
    ibkr_key_id: str | None = None
    ibkr_private_key_file: Path | None = field(default=None, repr=False)
    ibkr_scope: str = DEFAULT_SCOPE
    ibkr_assertion_audience: str = "/token"
    # 0 lifts a client-side limit (benchmarks against a sandbox without limits).
    max_requests_per_second_per_endpoint: int = 10
    max_requests_per_minute: int = 600
    # Each granted slot counts for (window + margin): scheduling jitter between the slot and the
    # request reaching IBKR must not put 11 requests into one second there.
    rate_limit_margin_s: float = 0.15
    poll: PollOverrides = field(default_factory=PollOverrides)
    honor_downtime: bool = True
    client_instruction_id_start: int = 1_000_000_000
    metrics_port: int | None = None
    #: Address the metrics servers bind (loopback unless told otherwise).
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: str = "json"
    http_timeout_s: float = 30.0
    # How long a claimed row stays with its process; a crashed holder's rows wait this long.
    lease_s: float = DEFAULT_LEASE_S
    #: Lifetime (exp - iat) of a signed request body, in seconds.
    body_lifetime_s: float = 300.0
    #: How long after a POST whose answer was lost it may still register at IBKR, in seconds.
    inflight_horizon_s: float = 120.0
    #: The clock difference assumed possible between this host and IBKR, in seconds.
    max_clock_skew_s: float = 30.0
    #: Largest inbound message, and largest body built from one, in bytes.
    max_message_bytes: int = 2 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.ibkr_token_url:
            object.__setattr__(
                self, "ibkr_token_url", self.ibkr_base_url.rstrip("/") + "/oauth2/api/v1/token"
            )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (for the demo and tests)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def require_ibkr_credentials(self) -> tuple[str, str, Path]:
        """Client id, key id and private-key path, or ConfigError naming the missing one."""
        if not self.ibkr_client_id:
            raise ConfigError(
                "IBKR_CLIENT_ID is required to talk to IBKR; set it in the environment"
            )
        if not self.ibkr_key_id:
            raise ConfigError("IBKR_KEY_ID is required to talk to IBKR; set it in the environment")
        if self.ibkr_private_key_file is None:
            raise ConfigError(
                "IBKR_PRIVATE_KEY_FILE is required to talk to IBKR; point it at the PEM private key"
            )
        if not self.ibkr_private_key_file.is_file():
            raise ConfigError(
                f"IBKR_PRIVATE_KEY_FILE={self.ibkr_private_key_file} is not a readable file"
            )
        return self.ibkr_client_id, self.ibkr_key_id, self.ibkr_private_key_file


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments, blank lines and `export ` prefixes allowed)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line_number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        if "=" not in line:
            raise ConfigError(f"{path}:{line_number}: expected KEY=VALUE, got {raw!r}")
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than zero")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    scheme = urlsplit(raw).scheme.split("+", 1)[0]
    if scheme not in schemes:
        raise ConfigError(f"{name}={raw!r} must be a URL with scheme {' or '.join(schemes)}")
    return raw


def load_settings(
    environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")
) -> Settings:
    """Read the settings from the environment (and a `.env` file, which the environment overrides).

    Raises ConfigError with one line naming the first missing or malformed setting.
    """
    env: dict[str, str] = {}
    if dotenv is not None:
        env.update(read_dotenv(dotenv))
    env.update(os.environ if environ is None else environ)

    key_file = env.get("IBKR_PRIVATE_KEY_FILE") or None
    metrics_port_raw = env.get("METRICS_PORT") or None
    metrics_port = None
    if metrics_port_raw is not None:
        metrics_port = _int(env, "METRICS_PORT", 0, minimum=1)
        if metrics_port > 65534:
            raise ConfigError(f"METRICS_PORT={metrics_port_raw!r} must be below 65535")
    log_format = env.get("LOG_FORMAT", "json") or "json"
    if log_format not in {"json", "console"}:
        raise ConfigError(f"LOG_FORMAT={log_format!r} must be json or console")
    log_level = (env.get("LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")
    base_url = _url(env, "IBKR_BASE_URL", "https://api.ibkr.com", ("http", "https")).rstrip("/")
    token_url = env.get("IBKR_TOKEN_URL") or ""
    if token_url:
        token_url = _url(env, "IBKR_TOKEN_URL", token_url, ("http", "https"))
    http_timeout = _float(env, "IBKR_HTTP_TIMEOUT_S")
    lease = _float(env, "IBKR_LEASE_S")
    max_message_bytes = _int(env, "MAX_MESSAGE_BYTES", 2 * 1024 * 1024, minimum=1024)
    if max_message_bytes > MAX_MESSAGE_BYTES_CEILING:
        raise ConfigError(
            f"MAX_MESSAGE_BYTES={max_message_bytes} is above IBKR's own limit of "
            f"{MAX_MESSAGE_BYTES_CEILING} bytes"
        )
    skew_raw = env.get("IBKR_MAX_CLOCK_SKEW_S")
    skew = 30.0
    if skew_raw:
        try:
            skew = float(skew_raw)
        except ValueError:
            raise ConfigError(f"IBKR_MAX_CLOCK_SKEW_S={skew_raw!r} is not a number") from None
        if not 0 <= skew < 3600:
            raise ConfigError(f"IBKR_MAX_CLOCK_SKEW_S={skew_raw!r} must be between 0 and 3600")
    margin_raw = env.get("IBKR_RATE_LIMIT_MARGIN_S")
    margin = 0.15
    if margin_raw:
        try:
            margin = float(margin_raw)
        except ValueError:
            raise ConfigError(f"IBKR_RATE_LIMIT_MARGIN_S={margin_raw!r} is not a number") from None
        if not 0.01 <= margin < 1:
            raise ConfigError(
                f"IBKR_RATE_LIMIT_MARGIN_S={margin_raw!r} must be at least 0.01 and below 1 "
                "second (it widens IBKR's one-second window for the delays on the way)"
            )
    timeout_s, lease_s = http_timeout or 30.0, lease or DEFAULT_LEASE_S
    if lease_s <= 2 * timeout_s:
        raise ConfigError(
            f"IBKR_LEASE_S={lease_s:g} must be more than twice IBKR_HTTP_TIMEOUT_S "
            f"({timeout_s:g} s): a POST may take the timeout to leave and again to be answered, "
            "all within its lease"
        )
    return Settings(
        database_url=_url(
            env, "DATABASE_URL", "sqlite:///ibkr_worker.db", ("sqlite", "postgresql", "postgres")
        ),
        broker_url=_url(
            env, "BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F", ("amqp", "amqps", "stub")
        ),
        ibkr_base_url=base_url,
        ibkr_token_url=token_url,
        ibkr_client_id=env.get("IBKR_CLIENT_ID") or None,
        ibkr_key_id=env.get("IBKR_KEY_ID") or None,
        ibkr_private_key_file=Path(key_file) if key_file else None,
        ibkr_scope=env.get("IBKR_SCOPE") or DEFAULT_SCOPE,
        ibkr_assertion_audience=env.get("IBKR_ASSERTION_AUDIENCE") or "/token",
        max_requests_per_second_per_endpoint=_int(
            env, "IBKR_MAX_REQUESTS_PER_SECOND_PER_ENDPOINT", 10, minimum=0
        ),
        max_requests_per_minute=_int(env, "IBKR_MAX_REQUESTS_PER_MINUTE", 600, minimum=0),
        rate_limit_margin_s=margin,
        poll=PollOverrides(
            initial_delay_s=_float(env, "POLL_INITIAL_DELAY_S"),
            max_delay_s=_float(env, "POLL_MAX_DELAY_S"),
            backoff_factor=_float(env, "POLL_BACKOFF_FACTOR"),
            deadline_s=_float(env, "POLL_DEADLINE_S"),
        ),
        honor_downtime=_bool(env, "IBKR_HONOR_DOWNTIME", True),
        client_instruction_id_start=_int(
            env, "CLIENT_INSTRUCTION_ID_START", 1_000_000_000, minimum=1
        ),
        metrics_port=metrics_port,
        metrics_host=env.get("METRICS_HOST") or "127.0.0.1",
        log_level=log_level,
        log_format=log_format,
        http_timeout_s=timeout_s,
        lease_s=lease_s,
        body_lifetime_s=_float(env, "IBKR_BODY_LIFETIME_S") or 300.0,
        inflight_horizon_s=_float(env, "IBKR_INFLIGHT_HORIZON_S") or 120.0,
        max_clock_skew_s=skew,
        max_message_bytes=max_message_bytes,
    )
