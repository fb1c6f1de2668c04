"""Encryption of tenant secrets at rest, with Fernet (AES-128-CBC and HMAC-SHA256)."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DERIVED_KEY_BYTES = 32


class SecretError(ValueError):
    """A stored secret cannot be decrypted with the configured key."""


class SecretBox:
    """Encrypt and decrypt short secrets such as passwords and auth tokens."""

    def __init__(self, key: str):
        try:
            self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
            self._key_bytes = base64.urlsafe_b64decode(key)
        except (ValueError, TypeError):
            raise SecretError(
                "TM_SECRET_KEY is not a Fernet key: generate one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from None

    @classmethod
    def from_settings(cls, secret_key: str) -> "SecretBox":
        """Return a box for the configured key, or for a fresh key when none is set.

        A fresh key suits only the embedded store, which lives no longer than the process.
        """
        return cls(secret_key or Fernet.generate_key().decode())

    def derive_key(self, label: bytes) -> bytes:
        """Return a 32-byte key for one purpose, derived from the secret key with HKDF-SHA256.

        Each label gives an independent key, so a key derived for one purpose reveals
        neither the secret key nor the key of another label.
        """
        return HKDF(algorithm=hashes.SHA256(), length=DERIVED_KEY_BYTES, salt=None, info=label).derive(self._key_bytes)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretError("a stored secret cannot be decrypted: TM_SECRET_KEY differs from the key it was stored with") from None
