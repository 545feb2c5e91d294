"""Encryption of secret values at rest (module and job secrets).

Values are JSON documents encrypted with Fernet (AES-128-CBC + HMAC-SHA256, timestamped). The
Fernet key is derived from ``Settings.encryption_key()`` (``AUTOPLAT_SECRET_KEY``, falling back to
the JWT secret) with SHA-256, so any string of enough entropy works as the setting.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["DecryptionFailed", "decrypt_json", "encrypt_json", "fernet_key"]


class DecryptionFailed(Exception):
    """A token that cannot be decrypted with the current key (the key changed, or the data is corrupt)."""


def fernet_key(key: str) -> bytes:
    """The Fernet key derived from a settings secret: urlsafe base64 of its SHA-256."""
    return base64.urlsafe_b64encode(hashlib.sha256(key.encode("utf-8")).digest())


def encrypt_json(key: str, obj: Any) -> str:
    """Encrypt a JSON-serialisable value; returns an ASCII token safe to store in a text column."""
    plaintext = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return Fernet(fernet_key(key)).encrypt(plaintext).decode("ascii")


def decrypt_json(key: str, token: str) -> dict[str, Any]:
    """Decrypt a token made by :func:`encrypt_json` holding a JSON object.

    Raises:
        DecryptionFailed: wrong key, tampered or malformed token, or not a JSON object.
    """
    try:
        plaintext = Fernet(fernet_key(key)).decrypt(token.encode("ascii"))
        value = json.loads(plaintext)
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise DecryptionFailed("stored secrets cannot be decrypted with the current secret key") from exc
    if not isinstance(value, dict):
        raise DecryptionFailed("stored secrets are not a JSON object")
    return value
