"""What makes a password unacceptable, and what makes a name unacceptable.

Passwords: shorter than :data:`MIN_PASSWORD_LENGTH`, only whitespace, one character repeated, a short
pattern repeated (``abcabcabcabc``), or a common password: one of the list shipped in
``common_passwords.json`` (about 18,000 entries, from Django's list), alone or padded with digits and
punctuation (``password2024!``, ``123456qwerty``) or repeated (``qwertyqwerty``). No network at run time.

Names (user names, usernames, emails): no control characters (NUL, newlines, escape sequences...),
which would otherwise reach logs, the audit table and other people's screens.
"""

from __future__ import annotations

import functools
import json
import string
import unicodedata
from importlib import resources

MIN_PASSWORD_LENGTH = 12
_PADDING = string.digits + string.punctuation + string.whitespace


@functools.cache
def common_passwords() -> frozenset[str]:
    data = json.loads(resources.files("registry").joinpath("common_passwords.json").read_text("utf-8"))
    return frozenset(data["passwords"])


def _repeats(text: str, *, max_unit: int) -> str | None:
    """The unit when ``text`` is a unit of at most ``max_unit`` characters written twice or more."""
    for size in range(1, min(max_unit, len(text) // 2) + 1):
        if len(text) % size == 0 and text[:size] * (len(text) // size) == text:
            return text[:size]
    return None


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must be at least {MIN_PASSWORD_LENGTH} characters"
    if not password.strip():
        return "password must not be only whitespace"
    if len(set(password)) == 1:
        return "password must not be one character repeated"
    lowered = password.lower()
    if _repeats(lowered, max_unit=4) is not None:
        return "password must not be a short pattern repeated"
    common = common_passwords()
    unit = _repeats(lowered, max_unit=len(lowered) // 2)
    core = lowered.strip(_PADDING)
    if lowered in common or core in common or (unit is not None and unit in common):
        return "password is too common (it is on a list of passwords attackers try first)"
    return None


def control_character(text: str) -> str | None:
    """The first control character (or lone surrogate) in ``text``, as ``U+XXXX``, if any."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"U+{ord(char):04X}"
    return None
