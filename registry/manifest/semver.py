"""Semantic versions (SemVer 2.0.0) and npm-style version ranges.

Only what the manifest needs: parsing, precedence and range membership. Ranges follow the
node-semver grammar: ``^`` and ``~`` ranges, comparators (``>= > <= < =``) joined by spaces
(AND) and ``||`` (OR), ``x``/``X``/``*`` wildcards and partial versions (``1.x``, ``1.2``),
and hyphen ranges (``1.2.3 - 2.0.0``). As in npm, a prerelease version only satisfies a
range when one of its comparators names a prerelease of the same ``major.minor.patch``, so
``^1.2.0`` does not pull in ``1.3.0-beta.1``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

__all__ = [
    "Comparator",
    "Range",
    "Version",
    "is_valid_range",
    "is_valid_version",
    "parse_range",
    "parse_version",
]

_NUM = r"0|[1-9][0-9]*"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
_PRE = rf"{_PRE_ID}(?:\.{_PRE_ID})*"
_BUILD = rf"{_BUILD_ID}(?:\.{_BUILD_ID})*"

_VERSION_RE = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})(?:-(?P<pre>{_PRE}))?(?:\+(?P<build>{_BUILD}))?",
)
_XR = rf"(?:{_NUM}|[xX*])"
_PARTIAL_RE = re.compile(
    rf"v?(?P<major>{_XR})(?:\.(?P<minor>{_XR})(?:\.(?P<patch>{_XR})(?:-(?P<pre>{_PRE}))?(?:\+(?P<build>{_BUILD}))?)?)?",
)
_COMPARATOR_RE = re.compile(r"(?P<op>>=|<=|>|<|=|\^|~>|~)?(?P<ver>\S+)")
_HYPHEN_RE = re.compile(r"(?P<low>[^\s]+)\s+-\s+(?P<high>[^\s]+)")
# An operator followed by spaces binds to the next token: ">= 1.2.3" is ">=1.2.3".
_OP_SPACE_RE = re.compile(r"(>=|<=|>|<|=|\^|~>|~)\s+")
_MAX_RANGE_LENGTH = 1024


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A SemVer 2.0.0 version.

    Equality, hashing and ordering follow SemVer precedence: build metadata is ignored, so
    ``1.0.0+a == 1.0.0+b``.

    Attributes:
        major: The major version.
        minor: The minor version.
        patch: The patch version.
        prerelease: Dot-separated prerelease identifiers; numeric ones are ``int``.
        build: Dot-separated build metadata identifiers.
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: tuple[str, ...] = field(default=())

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after all of its prereleases; numeric identifiers sort before
        # alphanumeric ones; a longer identifier list wins when the common prefix is equal.
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    @property
    def release(self) -> tuple[int, int, int]:
        """The ``(major, minor, patch)`` triple."""
        return (self.major, self.minor, self.patch)


def _prerelease(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def parse_version(text: str) -> Version:
    """Parse a strict SemVer 2.0.0 version such as ``1.2.3-rc.1+build.5``.

    Args:
        text: The version string; no leading ``v`` and no surrounding whitespace.

    Returns:
        The parsed version.

    Raises:
        ValueError: If ``text`` is not a valid SemVer 2.0.0 version.
    """
    if not isinstance(text, str):
        raise ValueError(f"version must be a string, got {type(text).__name__}")
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid semantic version: {text[:100]!r}")
    return Version(
        int(m["major"]),
        int(m["minor"]),
        int(m["patch"]),
        _prerelease(m["pre"]),
        tuple(m["build"].split(".")) if m["build"] else (),
    )


def is_valid_version(text: object) -> bool:
    """Return whether ``text`` is a valid SemVer 2.0.0 version string."""
    return isinstance(text, str) and _VERSION_RE.fullmatch(text) is not None


@dataclass(frozen=True)
class Comparator:
    """One primitive comparison, such as ``>=1.2.0`` or ``<2.0.0-0``.

    Attributes:
        op: One of ``>=``, ``>``, ``<=``, ``<``, ``=``.
        version: The version compared against.
    """

    op: str
    version: Version

    def test(self, version: Version) -> bool:
        """Return whether ``version`` satisfies this comparison."""
        if self.op == ">=":
            return version >= self.version
        if self.op == ">":
            return version > self.version
        if self.op == "<=":
            return version <= self.version
        if self.op == "<":
            return version < self.version
        return version == self.version

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


@dataclass(frozen=True)
class Range:
    """A set of versions: an OR of AND-ed comparator sets.

    An empty comparator set matches every release (``*``).

    Attributes:
        raw: The range as written.
        sets: The OR-ed alternatives, each a tuple of AND-ed comparators.
    """

    raw: str
    sets: tuple[tuple[Comparator, ...], ...]

    def contains(self, version: Version) -> bool:
        """Return whether ``version`` satisfies the range (npm semantics for prereleases).

        Args:
            version: The version to test.

        Returns:
            True if some alternative of the range accepts ``version``.
        """
        return any(_test_set(comparators, version) for comparators in self.sets)

    def __contains__(self, version: object) -> bool:
        return isinstance(version, Version) and self.contains(version)

    def __str__(self) -> str:
        return " || ".join(" ".join(str(c) for c in cs) or "*" for cs in self.sets)


def _test_set(comparators: tuple[Comparator, ...], version: Version) -> bool:
    if not all(c.test(version) for c in comparators):
        return False
    if not version.prerelease:
        return True
    # npm: a prerelease only matches if a comparator opts into prereleases of the same release.
    return any(c.version.prerelease and c.version.release == version.release for c in comparators)


@dataclass(frozen=True)
class _Partial:
    major: int | None
    minor: int | None
    patch: int | None
    prerelease: tuple[int | str, ...] = ()

    def floor(self) -> Version:
        return Version(self.major or 0, self.minor or 0, self.patch or 0, self.prerelease)


def _parse_partial(text: str) -> _Partial:
    m = _PARTIAL_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid version in range: {text[:100]!r}")
    parts: list[int | None] = []
    wildcard = False
    for name in ("major", "minor", "patch"):
        value = m[name]
        if value is None or value in ("x", "X", "*"):
            wildcard = True
            parts.append(None)
        elif wildcard:
            raise ValueError(f"a number cannot follow a wildcard in {text[:100]!r}")
        else:
            parts.append(int(value))
    if m["pre"] and wildcard:
        raise ValueError(f"a prerelease needs a full version in {text[:100]!r}")
    return _Partial(parts[0], parts[1], parts[2], _prerelease(m["pre"]))


def _lowest(major: int, minor: int, patch: int) -> Version:
    # "-0" is the lowest prerelease: "<2.0.0-0" excludes every 2.0.0 prerelease too.
    return Version(major, minor, patch, (0,))


_NOTHING = (Comparator("<", _lowest(0, 0, 0)),)


def _desugar(op: str, p: _Partial) -> tuple[Comparator, ...]:
    """Turn one (possibly partial) comparator into primitive comparators."""
    major, minor, patch = p.major, p.minor, p.patch
    if op in ("", "="):
        if major is None:
            return ()
        if minor is None:
            return (Comparator(">=", p.floor()), Comparator("<", _lowest(major + 1, 0, 0)))
        if patch is None:
            return (Comparator(">=", p.floor()), Comparator("<", _lowest(major, minor + 1, 0)))
        return (Comparator("=", p.floor()),)
    if op == "^":
        if major is None:
            return ()
        # Allow changes that do not modify the left-most non-zero part.
        if minor is None or major > 0:
            upper = _lowest(major + 1, 0, 0)
        elif patch is None or minor > 0:
            upper = _lowest(0, minor + 1, 0)
        else:
            upper = _lowest(0, 0, patch + 1)
        return (Comparator(">=", p.floor()), Comparator("<", upper))
    if op in ("~", "~>"):
        if major is None:
            return ()
        if minor is None:
            return (Comparator(">=", p.floor()), Comparator("<", _lowest(major + 1, 0, 0)))
        return (Comparator(">=", p.floor()), Comparator("<", _lowest(major, minor + 1, 0)))
    if op == ">":
        if major is None:
            return _NOTHING
        if minor is None:
            return (Comparator(">=", Version(major + 1, 0, 0)),)
        if patch is None:
            return (Comparator(">=", Version(major, minor + 1, 0)),)
        return (Comparator(">", p.floor()),)
    if op == ">=":
        return () if major is None else (Comparator(">=", p.floor()),)
    if op == "<":
        if major is None:
            return _NOTHING
        if minor is None:
            return (Comparator("<", _lowest(major, 0, 0)),)
        if patch is None:
            return (Comparator("<", _lowest(major, minor, 0)),)
        return (Comparator("<", p.floor()),)
    # "<="
    if major is None:
        return ()
    if minor is None:
        return (Comparator("<", _lowest(major + 1, 0, 0)),)
    if patch is None:
        return (Comparator("<", _lowest(major, minor + 1, 0)),)
    return (Comparator("<=", p.floor()),)


def _parse_hyphen(low_text: str, high_text: str) -> tuple[Comparator, ...]:
    low, high = _parse_partial(low_text), _parse_partial(high_text)
    lower = () if low.major is None else (Comparator(">=", low.floor()),)
    return lower + _desugar("<=", high)


def _parse_set(text: str) -> tuple[Comparator, ...]:
    text = text.strip()
    hyphen = _HYPHEN_RE.fullmatch(text)
    if hyphen:
        return _parse_hyphen(hyphen["low"], hyphen["high"])
    comparators: list[Comparator] = []
    for token in _OP_SPACE_RE.sub(r"\1", text).split():
        m = _COMPARATOR_RE.fullmatch(token)
        if m is None:  # pragma: no cover - \S+ always matches a split token
            raise ValueError(f"invalid comparator: {token[:100]!r}")
        comparators.extend(_desugar(m["op"] or "", _parse_partial(m["ver"])))
    return tuple(comparators)


def parse_range(text: str) -> Range:
    """Parse an npm-style version range.

    Examples of accepted ranges: ``*``, ``1.2.3``, ``=1.2.3``, ``^1.2.0``, ``~1.2``, ``1.x``,
    ``>=1.0.0 <2.0.0``, ``1.2.3 - 2.0.0``, ``^1.0.0 || ^2.0.0``, ``>=1.0.0-beta.1``. An empty
    range means ``*``.

    Args:
        text: The range string (at most 1024 characters).

    Returns:
        The parsed range.

    Raises:
        ValueError: If ``text`` is not a valid range.
    """
    if not isinstance(text, str):
        raise ValueError(f"range must be a string, got {type(text).__name__}")
    if len(text) > _MAX_RANGE_LENGTH:
        raise ValueError(f"range is longer than {_MAX_RANGE_LENGTH} characters")
    alternatives = text.split("||")
    if len(alternatives) > 1 and any(not a.strip() for a in alternatives):
        raise ValueError(f"empty alternative in range {text[:100]!r}")
    return Range(raw=text, sets=tuple(_parse_set(a) for a in alternatives))


def is_valid_range(text: object) -> bool:
    """Return whether ``text`` is a valid npm-style version range string."""
    if not isinstance(text, str):
        return False
    try:
        parse_range(text)
    except ValueError:
        return False
    return True
