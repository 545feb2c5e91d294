"""Confining a handler process before any module code runs in it (Linux).

What the handler process gets, in order:

* ``no_new_privs``, so nothing it executes can gain privileges (setuid binaries, file caps);
* resource limits with hard caps it cannot raise: address space (memory), open files, and a soft
  CPU-time limit per run;
* a Landlock domain (Linux >= 5.13): files may be read only under the Python installation, its
  packages, the SDK and the module code folders, plus ``/usr``, ``/etc`` and the like, and written
  only in the process's own temporary folder (and paths the operator adds). The platform's state
  folder (registry database, secrets, keys) is outside every allowed path. With Landlock ABI 6 or
  later the process also may not signal processes outside its domain (the worker) nor reach their
  abstract Unix sockets;
* when the worker runs as root: every capability dropped (bounding set included), so the handler
  cannot raise its limits, override file permissions, trace or signal other users' processes;
  optionally a switch to an unprivileged user.

Each step is reported in :class:`Confinement`, which the worker logs once, so an operator can see
which protections this kernel gave.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_O_PATH = 0o10000000

# Filesystem access rights (include/uapi/linux/landlock.h).
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_TRUNCATE = 1 << 14
_IOCTL_DEV = 1 << 15
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

#: System folders every Python process reads (shared libraries, certificates, time zones, /dev/urandom).
#: Of /etc only what name resolution, TLS and locales need: the rest may hold keys (ssh host keys,
#: /etc/shadow) that a root-owned handler process could otherwise read by plain ownership.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/proc",
    "/sys",
    "/dev",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/passwd",
    "/etc/group",
    "/etc/ld.so.cache",
    "/etc/alternatives",
    "/etc/os-release",
    "/etc/fonts",
)


def _all_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= 1 << 13  # REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


@dataclass
class Limits:
    """Per-process caps (hard) and the per-run soft values, in bytes / seconds / count."""

    memory_bytes: int | None = None
    open_files: int | None = None


@dataclass
class Confinement:
    """What :func:`confine` managed to apply (reported to the worker)."""

    landlock_abi: int = 0
    landlock: bool = False
    scoped: bool = False
    capabilities_dropped: bool = False
    user: int | None = None
    limits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: unavailable)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(abi), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock(read: list[str], write: list[str], abi: int, report: Confinement) -> None:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    handled = _all_fs_rights(abi)
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(handled_access_fs=handled, handled_access_net=0, scoped=scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 8
    ruleset = libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        seen: set[str] = set()
        for paths, rights in ((write, handled), (read, _READ & handled)):
            for raw in paths:
                path = os.path.realpath(raw)
                if path in seen or not os.path.exists(path):
                    continue
                seen.add(path)
                fd = os.open(path, _O_PATH | os.O_CLOEXEC)
                try:
                    allowed = rights if os.path.isdir(path) else rights & _FILE_RIGHTS
                    rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
                    if (
                        libc.syscall(
                            ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
                            ruleset,
                            _LANDLOCK_RULE_PATH_BENEATH,
                            ctypes.byref(rule),
                            0,
                        )
                        < 0
                    ):
                        err = ctypes.get_errno()
                        raise OSError(err, f"landlock_add_rule {path}: {os.strerror(err)}")
                finally:
                    os.close(fd)
        if libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ruleset, 0) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
    report.landlock = True
    report.scoped = bool(scoped)


def _drop_capabilities(report: Confinement) -> None:
    libc = _libc()
    # The bounding set first (needs CAP_SETPCAP, which is dropped last): a root process that
    # executes a program regains nothing.
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(version=0x20080522, pid=0)
    data = (Data * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    report.capabilities_dropped = True


def _set_limit(kind: int, name: str, value: int | None, report: Confinement) -> None:
    if value is None:
        return
    resource.setrlimit(kind, (value, value))
    report.limits[name] = value


def confine(
    *, read: list[str], write: list[str], limits: Limits, user: int | None = None, group: int | None = None
) -> Confinement:
    """Confine this process for good (see the module docstring). Call before loading module code.

    Raises:
        OSError: A protection the kernel offers could not be applied (never silently weaker).
    """
    report = Confinement()
    if not sys.platform.startswith("linux"):
        report.notes.append("not Linux: only resource limits apply")
        _set_limit(resource.RLIMIT_NOFILE, "open_files", limits.open_files, report)
        return report
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    _set_limit(resource.RLIMIT_AS, "memory_bytes", limits.memory_bytes, report)
    _set_limit(resource.RLIMIT_NOFILE, "open_files", limits.open_files, report)
    report.landlock_abi = landlock_abi()
    if report.landlock_abi >= 1:
        _landlock(read, write, report.landlock_abi, report)
    else:
        report.notes.append("Landlock unavailable: files are protected by permissions only")
    if os.geteuid() == 0:
        if user is not None:
            os.setgroups([])
            os.setgid(group if group is not None else user)
            os.setuid(user)
            report.user = user
        else:
            _drop_capabilities(report)
    return report


def set_cpu_limit(seconds: float | None) -> None:
    """Allow ``seconds`` more CPU time from now (soft limit: SIGXCPU ends the process)."""
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if seconds is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime)
    soft = used + max(int(seconds), 1)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def set_memory_limit(limit: int | None) -> None:
    """Lower (or restore up to the hard cap) the address-space limit of the next run."""
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    soft = hard if limit is None else limit
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def allowed_reads(code_dirs: list[str], extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """Read-only paths of a handler process: system folders, the Python installation and its
    import path (entries holding a forbidden folder are left out), the SDK, the code folders."""
    import autoplat

    paths = list(SYSTEM_READ)
    paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += [p for p in sys.path if p and os.path.isabs(p)]
    paths.append(str(Path(autoplat.__file__).resolve().parent))
    paths += code_dirs
    paths += list(extra)
    return paths


def without(paths: list[str], forbidden: list[str]) -> list[str]:
    """``paths`` minus those equal to or above a ``forbidden`` folder (granting one would grant it)."""
    bad = [os.path.realpath(f) for f in forbidden]
    kept = []
    for raw in paths:
        path = os.path.realpath(raw)
        if any(b == path or b.startswith(path.rstrip("/") + "/") for b in bad):
            continue
        kept.append(raw)
    return kept
