"""Signed-JWT bodies and the client assertion: verifiable with the public key, amounts exact."""

from __future__ import annotations

import base64
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.unit.client_support import BODY
from worker.clock import ManualClock
from worker.ibkr.signing import (
    BodySigner,
    NonAsciiBodyError,
    SigningKeyError,
    client_assertion,
    load_private_key,
)

CLIENT_ID = "acme-client"
KEY_ID = "main"


def _segment(token: str, index: int) -> bytes:
    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@pytest.fixture
def signer(rsa_private_key: Any, clock: ManualClock) -> BodySigner:
    return BodySigner(rsa_private_key, CLIENT_ID, KEY_ID, clock)


def test_signed_body_verifies_with_the_public_key(
    signer: BodySigner, rsa_private_key: Any, clock: ManualClock
) -> None:
    token = signer.sign(BODY)
    claims = jwt.decode(
        token,
        rsa_private_key.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},  # the manual clock is in 2026
    )
    assert claims["instructionType"] == "INTERNAL_CASH_TRANSFER"
    assert claims["instruction"]["clientInstructionId"] == 1012983
    now = int(clock.now().timestamp())
    assert claims["iss"] == CLIENT_ID
    # iat a little in the past (a host clock slightly ahead of IBKR's), exp the lifetime ahead.
    assert claims["iat"] == now - 10
    assert claims["exp"] == now + 300


def test_a_body_never_outlives_the_lifetime_it_is_given(
    signer: BodySigner, clock: ManualClock
) -> None:
    now = int(clock.now().timestamp())
    short = jwt.decode(signer.sign(BODY, lifetime_s=42.9), options={"verify_signature": False})
    assert short["exp"] == now + 42
    # Never longer than the signer's own lifetime, never in the past.
    longer = jwt.decode(signer.sign(BODY, lifetime_s=10_000), options={"verify_signature": False})
    assert longer["exp"] == now + 300
    gone = jwt.decode(signer.sign(BODY, lifetime_s=-5), options={"verify_signature": False})
    assert gone["exp"] == now


def test_header_names_the_key_and_algorithm(signer: BodySigner) -> None:
    header = jwt.get_unverified_header(signer.sign(BODY))
    assert header == {"alg": "RS256", "kid": KEY_ID, "typ": "JWT"}


def test_decimal_amount_stays_exact_in_the_payload(signer: BodySigner) -> None:
    payload = _segment(signer.sign(BODY), 1).decode("ascii")
    assert '"amount":123.45,' in payload
    many_digits = {"instruction": {"amount": Decimal("0.1000000000000000055511151231257827")}}
    assert '"amount":0.1000000000000000055511151231257827' in _segment(
        signer.sign(many_digits), 1
    ).decode("ascii")


def test_payload_keeps_body_order_and_appends_claims(signer: BodySigner) -> None:
    payload = json.loads(_segment(signer.sign(BODY), 1))
    assert list(payload) == ["instructionType", "instruction", "iss", "iat", "exp"]
    assert list(payload["instruction"]) == list(BODY["instruction"])  # type: ignore[call-overload]


def test_non_ascii_body_is_refused_before_signing(signer: BodySigner) -> None:
    with pytest.raises(NonAsciiBodyError, match=r"instruction\.clientNote"):
        signer.sign({"instruction": {"clientNote": "d\u00e9j\u00e0 vu"}})


def test_signer_repr_shows_no_key(signer: BodySigner) -> None:
    text = repr(signer)
    assert "PRIVATE" not in text
    assert "RSAPrivateKey" not in text
    assert CLIENT_ID in text


def test_client_assertion_claims(rsa_private_key: Any, clock: ManualClock) -> None:
    token = client_assertion(
        rsa_private_key, client_id=CLIENT_ID, key_id=KEY_ID, audience="/token", clock=clock
    )
    claims = jwt.decode(
        token,
        rsa_private_key.public_key(),
        algorithms=["RS256"],
        audience="/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    now = int(clock.now().timestamp())
    assert claims == {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": "/token",
        "exp": now + 60,
        "iat": now - 10,
    }
    assert jwt.get_unverified_header(token)["kid"] == KEY_ID


def test_client_assertion_lifetime_is_configurable(
    rsa_private_key: Any, clock: ManualClock
) -> None:
    token = client_assertion(
        rsa_private_key,
        client_id=CLIENT_ID,
        key_id=KEY_ID,
        audience="https://api.ibkr.com/oauth2/api/v1/token",
        clock=clock,
        lifetime_s=20,
    )
    claims = json.loads(_segment(token, 1))
    assert claims["exp"] - int(clock.now().timestamp()) == 20
    assert claims["aud"] == "https://api.ibkr.com/oauth2/api/v1/token"


def test_private_key_is_loaded_once_per_file(rsa_key_files: tuple[Path, Path]) -> None:
    private_path, _ = rsa_key_files
    first = load_private_key(private_path)
    assert load_private_key(str(private_path)) is first


def test_missing_key_file_names_the_path_only(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="IBKR_PRIVATE_KEY_FILE") as caught:
        load_private_key(tmp_path / "absent.pem")
    assert str(tmp_path) in str(caught.value)


def test_garbage_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningKeyError) as caught:
        load_private_key(path)
    assert "c2VjcmV0" not in str(caught.value)


def test_non_rsa_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningKeyError, match="not an RSA key"):
        load_private_key(path)


def test_replaced_key_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    for index, key in enumerate(keys):
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.utime(path, ns=(index * 10**9, index * 10**9))
        loaded = load_private_key(path)
        assert loaded.private_numbers() == key.private_numbers()
