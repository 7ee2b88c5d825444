"""`ibkr-worker sandbox`: run the bundled IBKR simulator until SIGINT or SIGTERM.

Only click is imported at module level, so `ibkr-worker --help` stays fast; the sandbox itself
(and its key generation) loads when the command runs.
"""

from __future__ import annotations

import dataclasses
import signal
import tempfile
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

DEMO_CLIENT_ID = "sandbox-demo"
DEMO_KEY_ID = "demo-key"


def _rate(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{param.name} must be between 0 and 1")
    return value


def _seconds(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value < float("inf"):
        raise click.BadParameter(f"{param.name} must be a finite number of seconds >= 0")
    return value


def _delay_range(
    _ctx: click.Context, param: click.Parameter, value: tuple[float, float] | None
) -> tuple[float, float] | None:
    if value is not None and not 0.0 <= value[0] <= value[1]:
        raise click.BadParameter(f"{param.name} takes LOW HIGH seconds with 0 <= LOW <= HIGH")
    return value


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port; 0 picks a free one.")
@click.option("--client-id", help="Client id to accept (with --key-id and --public-key-file).")
@click.option("--key-id", help="kid of the client's key.")
@click.option(
    "--public-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM RSA public key of the client.",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=float,
    help="Virtual seconds per real second (60: a minute passes every second).",
)
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of every random choice.")
@click.option(
    "--quirks/--no-quirks",
    default=False,
    show_default=True,
    help="Answer in IBKR's older shapes (status/code/description, string ids).",
)
@click.option(
    "--downtime-calendar/--no-downtime-calendar",
    default=False,
    show_default=True,
    help="Apply IBKR's scheduled downtime (America/New_York).",
)
@click.option(
    "--downtime-behaviour",
    type=click.Choice(["reject", "hold"]),
    default="reject",
    show_default=True,
    help="In downtime: 503 problem, or accept and hold PENDING until the window ends.",
)
@click.option(
    "--duplicate-post",
    type=click.Choice(["reject", "accept"]),
    default="reject",
    show_default=True,
    help="Re-POST of a used clientInstructionId: 422 CORRUPT_DATA_DUBPLICATE_CP, or a second "
    "transaction that is applied (money moves again); status GETs answer 208 either way.",
)
@click.option(
    "--cancel-final-status",
    default="REJECTED",
    show_default=True,
    help="Status a cancelled instruction ends in.",
)
@click.option(
    "--rate-limits/--no-rate-limits",
    default=True,
    show_default=True,
    help="Answer 429 past the request limits (turn off for benchmarks).",
)
@click.option(
    "--max-per-second",
    default=10,
    show_default=True,
    type=int,
    help="Requests per second per endpoint and client.",
)
@click.option(
    "--max-per-minute",
    default=600,
    show_default=True,
    type=int,
    help="Requests per minute per client.",
)
@click.option(
    "--token-lifetime",
    default=86_400,
    show_default=True,
    type=int,
    help="Access-token lifetime in (virtual) seconds.",
)
@click.option(
    "--assertion-audience",
    type=click.Choice(["any", "path", "url"]),
    default="any",
    show_default=True,
    help='Accepted client-assertion aud: "/token", the full token URL, or either.',
)
@click.option(
    "--assertion-error-status",
    type=click.Choice(["400", "401"]),
    default="400",
    show_default=True,
    help="Status of a refused client assertion.",
)
@click.option(
    "--body-jwt-error-status",
    type=click.Choice(["400", "401"]),
    default="400",
    show_default=True,
    help="Status of a signed body that fails verification.",
)
@click.option(
    "--body-jwt-max-lifetime",
    type=float,
    default=None,
    help="Longest accepted exp - iat of a signed body, seconds (default: no limit).",
)
@click.option(
    "--require-jwt-content-type/--no-require-jwt-content-type",
    default=True,
    show_default=True,
    help="Refuse signed bodies sent without Content-Type: application/jwt.",
)
@click.option(
    "--query-throttle-status",
    type=click.Choice(["429", "422"]),
    default="429",
    show_default=True,
    help="Answer to an instructions/query over its limit.",
)
@click.option(
    "--query-throttle-interval",
    default=600.0,
    show_default=True,
    type=float,
    help="Seconds between instructions/query requests per client.",
)
@click.option(
    "--internal-cash-async-above",
    type=str,
    default=None,
    help="Internal cash transfers above this amount answer 202 and are batched.",
)
@click.option(
    "--internal-cash-async-delay",
    type=(float, float),
    default=None,
    callback=_delay_range,
    metavar="LOW HIGH",
    help="Internal cash 202s finish after a seeded delay in [LOW, HIGH] seconds each, instead "
    "of at the next 30-60 s batch.",
)
@click.option(
    "--internal-cash-always-async",
    is_flag=True,
    default=False,
    help="Every internal cash transfer answers 202 and is batched.",
)
@click.option(
    "--ach-outcome",
    type=click.Choice(["auto", "PROCESSED", "PENDING_VERIFICATION", "REJECTED"]),
    default="auto",
    show_default=True,
    help='ACH verification result; "auto": by bankInstructionName ("reject", "verif"/"micro").',
)
@click.option(
    "--deposit-auto-arrival",
    type=float,
    default=None,
    help="Seconds after which deposits arrive on their own (default: only via the admin API).",
)
@click.option(
    "--withdrawal-delay",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds until a withdrawal is PROCESSED (0: already in the 202).",
)
@click.option(
    "--error-500-rate", default=0.0, show_default=True, callback=_rate, help="Share answered 500."
)
@click.option(
    "--error-503-rate", default=0.0, show_default=True, callback=_rate, help="Share answered 503."
)
@click.option(
    "--drop-response-rate",
    default=0.0,
    show_default=True,
    callback=_rate,
    help="Share of POSTs applied whose response is then lost.",
)
@click.option(
    "--inflight-rate",
    default=0.0,
    show_default=True,
    callback=_rate,
    help="Share of funds POSTs held in flight: registered only after --inflight-hold (status "
    "GETs answer 404 meanwhile), then answered to whoever still listens.",
)
@click.option(
    "--inflight-hold",
    default=40.0,
    show_default=True,
    callback=_seconds,
    help="Real seconds a POST is held in flight before it registers.",
)
@click.option(
    "--inflight-recheck-exp/--no-inflight-recheck-exp",
    default=False,
    show_default=True,
    help="Check a held POST's signed-body exp again when it registers (expired: nothing "
    "registers).",
)
@click.option(
    "--answer-delay-rate",
    default=0.0,
    show_default=True,
    callback=_rate,
    help="Share of funds POSTs registered at once whose answer is held back --answer-delay.",
)
@click.option(
    "--answer-delay",
    default=40.0,
    show_default=True,
    callback=_seconds,
    help="Real seconds a delayed answer is held back.",
)
@click.option("--callback-url", default=None, help="POST every status change (signed JWT) here.")
@click.option(
    "--max-body-bytes",
    default=20 * 1024 * 1024,
    show_default=True,
    type=int,
    help="Bodies above this answer 413.",
)
def sandbox(**options: Any) -> None:
    """Run the bundled IBKR Funds & Banking simulator on loopback until interrupted.

    With --client-id, --key-id and --public-key-file it accepts that client; without them it
    generates a demo client and prints its credentials. Admin API under /__admin (loopback only).
    """
    client_options = [options["client_id"], options["key_id"], options["public_key_file"]]
    if any(client_options) and not all(client_options):
        raise click.UsageError("give --client-id, --key-id and --public-key-file together")

    from ibkr_sandbox import Sandbox, SandboxConfig, Timings
    from worker.logging import configure_logging

    # Command output (the client lines) goes to stdout; the sandbox's own log lines to stderr.
    configure_logging("INFO", "console")
    timings = dataclasses.replace(
        Timings(),
        deposit_auto_arrival_s=options["deposit_auto_arrival"],
        withdrawal_s=options["withdrawal_delay"],
        internal_cash_async_delay_s=options["internal_cash_async_delay"],
    )
    above = options["internal_cash_async_above"]
    config = SandboxConfig(
        host=options["host"],
        port=options["port"],
        speed=options["speed"],
        seed=options["seed"],
        quirks=options["quirks"],
        downtime_calendar=options["downtime_calendar"],
        downtime_behaviour=options["downtime_behaviour"],
        duplicate_post=options["duplicate_post"],
        cancel_final_status=options["cancel_final_status"],
        rate_limits=options["rate_limits"],
        max_requests_per_second_per_endpoint=options["max_per_second"],
        max_requests_per_minute=options["max_per_minute"],
        token_lifetime_s=options["token_lifetime"],
        assertion_audience=options["assertion_audience"],
        assertion_error_status=int(options["assertion_error_status"]),  # type: ignore[arg-type]
        body_jwt_error_status=int(options["body_jwt_error_status"]),  # type: ignore[arg-type]
        body_jwt_max_lifetime_s=options["body_jwt_max_lifetime"],
        require_jwt_content_type=options["require_jwt_content_type"],
        query_throttle_status=int(options["query_throttle_status"]),  # type: ignore[arg-type]
        query_throttle_interval_s=options["query_throttle_interval"],
        internal_cash_async_above=Decimal(above) if above is not None else None,
        internal_cash_always_async=options["internal_cash_always_async"],
        ach_outcome=options["ach_outcome"],
        error_500_rate=options["error_500_rate"],
        error_503_rate=options["error_503_rate"],
        drop_response_rate=options["drop_response_rate"],
        inflight_rate=options["inflight_rate"],
        inflight_hold_s=options["inflight_hold"],
        inflight_recheck_exp=options["inflight_recheck_exp"],
        answer_delay_rate=options["answer_delay_rate"],
        answer_delay_s=options["answer_delay"],
        callback_url=options["callback_url"],
        max_body_bytes=options["max_body_bytes"],
        timings=timings,
    )
    simulator = Sandbox(config)
    if all(client_options):
        client_id, key_id = options["client_id"], options["key_id"]
        simulator.register_client(client_id, key_id, options["public_key_file"].read_bytes())
        private_key_path = None
    else:
        client_id, key_id = DEMO_CLIENT_ID, DEMO_KEY_ID
        private_key_path, public_pem = _demo_key()
        simulator.register_client(client_id, key_id, public_pem)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    simulator.start()
    try:
        click.echo(f"IBKR sandbox listening on {simulator.base_url}")
        click.echo(f"client id: {client_id}")
        click.echo(f"key id: {key_id}")
        if private_key_path is not None:
            click.echo(f"private key: {private_key_path}")
        click.echo("")
        click.echo("# environment for the worker:")
        click.echo(f"IBKR_BASE_URL={simulator.base_url}")
        click.echo(f"IBKR_CLIENT_ID={client_id}")
        click.echo(f"IBKR_KEY_ID={key_id}")
        if private_key_path is not None:
            click.echo(f"IBKR_PRIVATE_KEY_FILE={private_key_path}")
        else:
            click.echo("IBKR_PRIVATE_KEY_FILE=<the private key of --public-key-file>")
        click.echo("IBKR_HONOR_DOWNTIME=false", nl=True)
        click.echo("# stop with Ctrl-C", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()


def _demo_key() -> tuple[Path, bytes]:
    """A fresh 3072-bit demo key pair in a private temporary directory:
    (private-key path, public PEM)."""
    from worker.ibkr.keygen import generate_key_pair

    private_path, public_path = generate_key_pair(tempfile.mkdtemp(prefix="ibkr-sandbox-"))
    return private_path, public_path.read_bytes()
