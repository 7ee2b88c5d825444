"""The `ibkr-worker` commands (see the contract): parse arguments, call a service, print.

Command output goes to stdout; logs go to stderr. Each command reads the settings once.
"""

from __future__ import annotations

import click

from worker import __version__, cli_ops, cli_processes, cli_queries


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ibkr-worker")
def cli() -> None:
    """ibkr-worker: submit instruction requests to IBKR's Funds & Banking API exactly once,
    follow each to a final status, and keep an audit trail of every change.

    Settings come from the environment (and a .env file in the working directory);
    see the README for the full table.
    """


@cli.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, dir_okay=True),
    help="Directory for the two PEM files (created if missing; existing keys are never replaced).",
)
@click.option(
    "--bits",
    type=click.Choice(["3072", "4096"]),
    default="3072",
    show_default=True,
    help="RSA key size IBKR accepts.",
)
def keygen_command(out_dir: str, bits: str) -> None:
    """Write an RSA key pair in PEM to register with IBKR (private key mode 0600)."""
    from worker.ibkr.keygen import generate_key_pair

    try:
        private_path, public_path = generate_key_pair(out_dir, int(bits))
    except (FileExistsError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"private key: {private_path}")
    click.echo(f"public key:  {public_path}")
    click.echo(
        f"Send {public_path.name} (the public key only) to IBKR with your client registration; "
        f"keep {private_path.name} secret and set IBKR_PRIVATE_KEY_FILE={private_path}."
    )


cli.add_command(cli_queries.migrate)
cli.add_command(cli_queries.status)
cli.add_command(cli_queries.audit)
cli.add_command(cli_queries.dead_letters)
cli.add_command(cli_processes.worker_command)
cli.add_command(cli_processes.scheduler_command)
cli.add_command(cli_ops.submit_command)
cli.add_command(cli_ops.health_command)
cli.add_command(cli_ops.demo_command)
cli_queries.dead_letters.add_command(cli_ops.replay_command)


def _add_sandbox_command() -> None:
    # worker.sandbox.cli imports only click at module level; the simulator loads when it runs.
    from worker.sandbox.cli import sandbox

    cli.add_command(sandbox)


_add_sandbox_command()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ibkr-worker")


if __name__ == "__main__":
    main()
