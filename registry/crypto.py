"""Encryption of secret values at rest (module and job secrets).

Values are JSON documents encrypted with Fernet (AES-128-CBC + HMAC-SHA256, timestamped). The
Fernet key is derived from ``Settings.encryption_key()`` (``AUTOPLAT_SECRET_KEY``, falling back to
the JWT secret) with SHA-256, so any string of enough entropy works as the setting.

Each module also has a vault key (``ctx.vault``, and the route body fields marked secret), derived
from the same setting with HKDF-SHA256 and the module's name, so one module's tokens never open
for another. Changing the setting makes every stored secret and every vault token unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from autoplat.vault import KeyVault

__all__ = ["DecryptionFailed", "decrypt_json", "encrypt_json", "fernet_key", "module_vault", "vault_key"]

#: HKDF salt of the module vault keys (a new derivation gets a new salt and token prefix).
_VAULT_SALT = b"autoplat module vault v1"


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


def vault_key(key: str, module: str) -> bytes:
    """The Fernet key of ``module``'s vault: HKDF-SHA256 of the settings secret, with the module's
    name as the context, so each module has its own key and none can be computed from another's."""
    derived = HKDF(algorithm=SHA256(), length=32, salt=_VAULT_SALT, info=b"module:" + module.encode("utf-8"))
    return base64.urlsafe_b64encode(derived.derive(key.encode("utf-8")))


def module_vault(key: str, module: str) -> KeyVault:
    """``module``'s vault (``ctx.vault`` as the worker answers it; the API seals route bodies with it)."""
    return KeyVault(vault_key(key, module))
