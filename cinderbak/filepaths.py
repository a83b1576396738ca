"""Paths and names that come out of a backup, made safe to use and show.

A backup holds whatever its tenant wrote: names with control characters
that would rewrite an operator's terminal, components such as ``..``,
symlinks to ``/etc``. Nothing here does I/O; ``cinderbak/extract.py``
writes files only through the checked parts this module returns, and
every name shown goes through :func:`escape_name`.
"""

from __future__ import annotations

import posixpath
import stat
import unicodedata

# Characters shown as escapes: C0/C1 controls and DEL (terminal control),
# format characters such as U+202E (right-to-left override, which makes a
# name read differently from what it is), separators other than a plain
# space (U+2028 breaks lines), and the surrogates Python uses for bytes that
# are not UTF-8.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class UnsafePath(ValueError):
    """A path that would leave the directory it is meant to stay in."""


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_name(name: str) -> str:
    """Return ``name`` with every control, format or non-UTF-8 character as
    a Python-style escape and backslashes doubled, so that distinct names
    stay distinct and a terminal shows exactly what is there."""
    out = []
    for char in name:
        if char == "\\":
            out.append("\\\\")
        elif char != " " and (
            char.isspace() or unicodedata.category(char) in _ESCAPED_CATEGORIES
        ):
            out.append(_escape_char(char))
        else:
            out.append(char)
    return "".join(out)


def backup_path(path: str) -> str:
    """Return the absolute, lexically normalised form of a path the
    operator asked for inside a backup (``etc/x`` and ``/etc/../etc/x``
    are ``/etc/x``). ``..`` cannot climb above the backup's root.

    Raise UnsafePath for an empty path or one with a NUL byte.
    """
    if not path or "\0" in path:
        raise UnsafePath(f"not a path: {escape_name(path)!s}")
    normal = posixpath.normpath("/" + path)
    # normpath keeps a leading "//" (POSIX allows it a meaning); we do not.
    return "/" + normal.lstrip("/")


def path_parts(path: str) -> tuple[str, ...]:
    """The components of an absolute backup path from backup_path()."""
    return tuple(part for part in path.split("/") if part)


def member_parts(prefix: tuple[str, ...], name: str) -> tuple[str, ...]:
    """Where a member of a tar stream made in directory ``prefix`` of the
    backup goes, relative to the target directory.

    ``name`` is relative to the directory tarred (``./a/b`` or ``a/b``;
    ``.`` is the directory itself). Raise UnsafePath when ``name`` is
    absolute, climbs with ``..``, holds a NUL byte, or a prefix component
    is not a plain name.
    """
    for part in prefix:
        _check_component(part)
    if "\0" in name or name.startswith("/"):
        raise UnsafePath(f"unsafe member name {escape_name(name)}")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        _check_component(part)
        parts.append(part)
    return (*prefix, *parts)


def _check_component(part: str) -> None:
    if part in ("", ".", "..") or "/" in part or "\0" in part:
        raise UnsafePath(f"unsafe path component {escape_name(part)!r}")


def safe_mode(mode: int) -> int:
    """The permission bits a fetched file or directory gets: the backup's,
    without set-user-ID, set-group-ID and sticky bits (a fetched file
    belongs to whoever fetched it; a set-user-ID copy of a tenant's file
    is a gift to the tenant)."""
    return stat.S_IMODE(mode) & 0o777
