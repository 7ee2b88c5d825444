"""RSA key pair for IBKR registration (reference §1: PEM, 3072 or 4096 bits).

The private key is written PKCS#8, unencrypted, readable by its owner only from the moment the
file exists (created with mode 0600, never widened); the public key as SubjectPublicKeyInfo.
Existing files are never overwritten: a replaced key would lock the client out of IBKR.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALLOWED_BITS = (3072, 4096)
PRIVATE_KEY_NAME = "ibkr_private_key.pem"
PUBLIC_KEY_NAME = "ibkr_public_key.pem"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: fail rather than replace; the mode applies at creation, so no window where a
    # private key is readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        os.close(fd)


def generate_key_pair(out_dir: str | os.PathLike[str], bits: int = 3072) -> tuple[Path, Path]:
    """Write a new RSA key pair into `out_dir` (created if missing) and return
    `(private_path, public_path)`. `bits` is 3072 or 4096.

    Raises ValueError for another size and FileExistsError if either file already exists.
    """
    if bits not in ALLOWED_BITS:
        raise ValueError(f"IBKR accepts RSA keys of 3072 or 4096 bits, not {bits}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(
                f"{path} already exists; refusing to overwrite a key (move it away or choose "
                "another --out directory)"
            )
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except OSError:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path
