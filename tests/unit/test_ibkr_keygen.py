"""Key pairs for IBKR: PEM, right sizes, private key 0600 from creation, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from worker.cli import cli
from worker.ibkr.keygen import generate_key_pair
from worker.ibkr.signing import load_private_key


def test_key_pair_is_pem_pkcs8_and_spki(tmp_path: Path) -> None:
    private_path, public_path = generate_key_pair(tmp_path / "keys", 3072)
    private_pem = private_path.read_bytes()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SPKI
    private = serialization.load_pem_private_key(private_pem, password=None)
    public = serialization.load_pem_public_key(public_path.read_bytes())
    assert isinstance(private, RSAPrivateKey) and isinstance(public, RSAPublicKey)
    assert private.key_size == 3072
    assert private.public_key().public_numbers() == public.public_numbers()
    assert load_private_key(private_path).key_size == 3072


def test_private_key_is_owner_only(tmp_path: Path) -> None:
    private_path, public_path = generate_key_pair(tmp_path, 3072)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) & 0o077 != 0o077


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    private_path, _ = generate_key_pair(tmp_path, 3072)
    before = private_path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_key_pair(tmp_path, 3072)
    assert private_path.read_bytes() == before


def test_other_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3072 or 4096"):
        generate_key_pair(tmp_path, 2048)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_4096_bit_keys(tmp_path: Path) -> None:
    private_path, _ = generate_key_pair(tmp_path, 4096)
    assert load_private_key(private_path).key_size == 4096


def test_keygen_command_prints_both_paths_and_what_to_send(tmp_path: Path) -> None:
    out = tmp_path / "ibkr"
    result = CliRunner().invoke(cli, ["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out / "ibkr_private_key.pem") in result.output
    assert str(out / "ibkr_public_key.pem") in result.output
    assert "Send ibkr_public_key.pem" in result.output
    again = CliRunner().invoke(cli, ["keygen", "--out", str(out)])
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.output


def test_keygen_command_refuses_other_sizes(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path), "--bits", "2048"])
    assert result.exit_code == 2
