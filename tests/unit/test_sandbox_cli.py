"""`ibkr-worker sandbox` documents its switches and checks its arguments."""

from __future__ import annotations

from click.testing import CliRunner

from worker.cli import cli

SWITCHES = (
    "--host",
    "--port",
    "--client-id",
    "--key-id",
    "--public-key-file",
    "--speed",
    "--seed",
    "--quirks",
    "--downtime-calendar",
    "--downtime-behaviour",
    "--duplicate-post",
    "--cancel-final-status",
    "--rate-limits",
    "--no-rate-limits",
    "--max-per-second",
    "--max-per-minute",
    "--token-lifetime",
    "--assertion-audience",
    "--assertion-error-status",
    "--body-jwt-error-status",
    "--body-jwt-max-lifetime",
    "--require-jwt-content-type",
    "--query-throttle-status",
    "--query-throttle-interval",
    "--internal-cash-async-above",
    "--internal-cash-always-async",
    "--ach-outcome",
    "--deposit-auto-arrival",
    "--withdrawal-delay",
    "--error-500-rate",
    "--error-503-rate",
    "--drop-response-rate",
    "--inflight-rate",
    "--inflight-hold",
    "--inflight-recheck-exp",
    "--answer-delay-rate",
    "--answer-delay",
    "--internal-cash-async-delay",
    "--callback-url",
    "--max-body-bytes",
)


def test_sandbox_help_lists_every_switch() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    missing = [switch for switch in SWITCHES if switch not in result.output]
    assert missing == []


def test_sandbox_is_listed_in_the_top_level_help() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "sandbox" in result.output


def test_client_options_must_come_together() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--client-id", "acme"])
    assert result.exit_code == 2
    assert "together" in result.output


def test_fault_rates_are_checked() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--error-500-rate", "1.5"])
    assert result.exit_code == 2
    assert CliRunner().invoke(cli, ["sandbox", "--inflight-rate", "-0.1"]).exit_code == 2
    assert CliRunner().invoke(cli, ["sandbox", "--answer-delay-rate", "2"]).exit_code == 2


def test_hold_times_and_delay_ranges_are_checked() -> None:
    for arguments in (
        ["--inflight-hold", "-1"],
        ["--answer-delay", "inf"],
        ["--internal-cash-async-delay", "3", "1"],
        ["--internal-cash-async-delay", "-1", "1"],
    ):
        result = CliRunner().invoke(cli, ["sandbox", *arguments])
        assert result.exit_code == 2, (arguments, result.output)
