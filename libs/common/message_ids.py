"""Message ids: one per text of a run, deterministic, and without the member's number in them."""

from __future__ import annotations

import hashlib
import hmac

from libs.common.crypto import SecretBox
from libs.common.phones import is_e164

# HKDF label of the key that message ids are made with. The label keeps this key
# independent of every other key derived from TM_SECRET_KEY.
KEY_LABEL = b"text-manager/message-id/v1"
MIN_KEY_BYTES = 32

# Hex digits kept of the HMAC-SHA256 tag: 80 bits. Two of n numbers in a run share a
# token with probability about n**2 / 2**81, about 1e-13 for a run of 500,000
# numbers. A shared token would give the second member no text and keep the run from
# completing, because the sender would take that job for the first member's text.
TOKEN_HEX_DIGITS = 20


class MessageIds:
    """Build message ids `{run_id}:{token}`, where the token is an HMAC-SHA256 of the run id and number.

    The same run and number always give the same id, so a job published twice is still
    one text: the sender sends each message id once. The id travels in logs, in the
    status callback URL and as the RabbitMQ message id. A plain hash of the number would
    not hide it there, because the numbers of a country are few enough to hash them all.
    The key is needed to test a guessed number against a token. Because the run id is
    hashed too, the tokens of one member in two runs cannot be linked without the key.

    Every process that builds ids must derive them from the same TM_SECRET_KEY. A changed
    key changes the ids, so a batch published again after the change is sent again.
    """

    def __init__(self, key: bytes):
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a message id key must be at least {MIN_KEY_BYTES} bytes: "
                             "build MessageIds with MessageIds.from_secrets")
        self._key = key

    @classmethod
    def from_secrets(cls, secrets: SecretBox) -> "MessageIds":
        """Return the builder whose key is derived from the secret key of `secrets`."""
        return cls(secrets.derive_key(KEY_LABEL))

    def __repr__(self) -> str:
        return "MessageIds(key=<hidden>)"

    def build(self, run_id: str, number: str) -> str:
        """Return the message id of the text to `number` in run `run_id`.

        Raises ValueError when `run_id` is empty, or when `number` is not in the E.164
        form that check_number returns, because "+1 202..." and "+1202..." would
        otherwise get different ids. The error does not show the number, since errors
        are logged.
        """
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"a message id needs a run id, got {run_id!r}")
        if not is_e164(number):
            described = f"{len(number)} characters" if isinstance(number, str) else f"a {type(number).__name__}"
            raise ValueError(f"a message id needs a number in E.164 form such as +12025550100, but the value given "
                             f"({described}) is not in that form: normalise it with check_number first")
        # The number contains no colon, so the part after the last colon is always the number.
        tag = hmac.new(self._key, f"{run_id}:{number}".encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{run_id}:{tag[:TOKEN_HEX_DIGITS]}"
