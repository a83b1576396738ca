"""Path safety and name escaping of file-level restore: properties
(hypothesis) and the cases a hostile backup would try."""

from __future__ import annotations

import posixpath
import stat
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cinderbak.filepaths import (
    UnsafePath,
    backup_path,
    escape_name,
    member_parts,
    path_parts,
    safe_mode,
)

# Names as a filesystem may hold them: any characters but "/" and NUL,
# including surrogate escapes of bytes that are not UTF-8.
raw_names = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b
)
names = raw_names.map(lambda b: b.decode("utf-8", "surrogateescape"))
member_names = st.lists(
    st.one_of(names, st.sampled_from(["..", ".", "", "/"])), max_size=6
).map("/".join)


def _target_safe(parts: tuple[str, ...]) -> bool:
    """Joined under a root, do these parts stay strictly below it?"""
    joined = posixpath.normpath(posixpath.join("/root", *parts))
    return joined.startswith("/root/") or (joined == "/root" and not parts)


@given(
    st.lists(names.filter(lambda n: n not in (".", "..")), max_size=3),
    member_names,
)
def test_member_parts_never_leave_the_target(prefix, name):
    try:
        parts = member_parts(tuple(prefix), name)
    except UnsafePath:
        return
    assert _target_safe(parts)
    assert all(p not in ("", ".", "..") and "/" not in p for p in parts)
    assert parts[: len(prefix)] == tuple(prefix)


@given(member_names)
def test_member_names_with_dotdot_or_absolute_are_refused(name):
    components = [c for c in name.split("/") if c not in ("", ".")]
    if ".." in components or name.startswith("/"):
        with pytest.raises(UnsafePath):
            member_parts((), name)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/../../b", "/etc/passwd", "..", "a/..", "a\0b"],
)
def test_hostile_member_names(name):
    with pytest.raises(UnsafePath):
        member_parts(("data",), name)


def test_member_names_relative_to_the_tarred_directory():
    assert member_parts(("etc", "ssh"), "./sshd_config") == (
        "etc",
        "ssh",
        "sshd_config",
    )
    assert member_parts(("etc",), ".") == ("etc",)
    assert member_parts((), "./a//b/") == ("a", "b")
    with pytest.raises(UnsafePath):
        member_parts(("..",), "x")


@given(st.text(min_size=1).filter(lambda t: "\0" not in t))
def test_backup_path_is_absolute_and_cannot_climb(path):
    normal = backup_path(path)
    assert normal.startswith("/") and not normal.startswith("//")
    assert ".." not in path_parts(normal)
    assert backup_path(normal) == normal


def test_backup_path_examples():
    assert backup_path("etc/x") == "/etc/x"
    assert backup_path("/etc/../../etc/x") == "/etc/x"
    assert backup_path("//etc") == "/etc"
    assert backup_path("/") == "/"
    assert path_parts("/") == ()
    for bad in ("", "a\0b"):
        with pytest.raises(UnsafePath):
            backup_path(bad)


def _visible(char: str) -> bool:
    return char == " " or not (
        char.isspace()
        or unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}
    )


@given(names)
def test_escaped_names_hold_no_control_or_invisible_characters(name):
    assert all(_visible(c) for c in escape_name(name))


@given(names, names)
def test_escaping_keeps_distinct_names_distinct(a, b):
    if a != b:
        assert escape_name(a) != escape_name(b)


def test_escape_examples():
    assert escape_name("plain name.txt") == "plain name.txt"
    assert escape_name("\x1b[31mred\nx") == "\\x1b[31mred\\x0ax"
    assert escape_name("a\\x1b") == "a\\\\x1b"  # not confused with ESC
    assert escape_name("abc\u202etxt.exe") == "abc\\u202etxt.exe"
    assert escape_name(b"caf\xe9".decode("utf-8", "surrogateescape")) == (
        "caf\\xe9"
    )
    assert escape_name("café") == "café"


@given(st.integers(min_value=0, max_value=0o177777))
def test_safe_mode_drops_special_bits(mode):
    kept = safe_mode(mode)
    assert kept == mode & 0o777
    assert not kept & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
