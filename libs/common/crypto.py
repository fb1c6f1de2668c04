"""Encryption of tenant secrets at rest, with Fernet (AES-128-CBC and HMAC-SHA256)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken


class SecretError(ValueError):
    """A stored secret cannot be decrypted with the configured key."""


class SecretBox:
    """Encrypt and decrypt short secrets such as passwords and auth tokens."""

    def __init__(self, key: str):
        try:
            self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
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

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretError("a stored secret cannot be decrypted: TM_SECRET_KEY differs from the key it was stored with") from None
