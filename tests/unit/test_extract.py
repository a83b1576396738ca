"""Writing fetched members under a target directory: what a hostile
backup tries (a symlink to /etc, then a file through it; special files;
set-user-ID bits) on a real temporary directory, no services."""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from cinderbak.extract import DirSink, TarSink


def _info(
    name,
    kind=tarfile.REGTYPE,
    *,
    mode=0o644,
    mtime=1_600_000_000,
    data=b"",
    link="",
):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info


@pytest.fixture
def sink(tmp_path):
    target = tmp_path / "to"
    target.mkdir()
    sink = DirSink(str(target))
    yield target, sink
    sink.close()


def test_files_dirs_and_links_keep_mode_and_mtime(sink):
    target, s = sink
    assert (
        s.add(
            _info("d", tarfile.DIRTYPE, mode=0o750, mtime=1_500_000_000),
            ("d",),
            None,
        ).result
        == "written"
    )
    done = s.add(
        _info("f", mode=0o4755, data=b"hello"),
        ("d", "f"),
        io.BytesIO(b"hello"),
    )
    assert done.result == "written" and done.size == 5
    s.add(_info("l", tarfile.SYMTYPE, link="/etc"), ("d", "l"), None)
    s.finish()
    f = target / "d" / "f"
    assert f.read_bytes() == b"hello"
    assert stat.S_IMODE(f.stat().st_mode) == 0o755  # set-user-ID dropped
    assert f.stat().st_mtime == 1_600_000_000
    assert os.readlink(target / "d" / "l") == "/etc"
    assert stat.S_IMODE((target / "d").stat().st_mode) == 0o750
    assert (target / "d").stat().st_mtime == 1_500_000_000


def test_nothing_is_written_through_a_symlink(sink, tmp_path):
    target, s = sink
    outside = tmp_path / "outside"
    outside.mkdir()
    s.add(_info("evil", tarfile.SYMTYPE, link=str(outside)), ("evil",), None)
    s.add(_info("up", tarfile.SYMTYPE, link=".."), ("up",), None)
    for parts in (("evil", "x"), ("up", "x"), ("evil", "deeper", "x")):
        done = s.add(_info("x", data=b"pwn"), parts, io.BytesIO(b"pwn"))
        assert done.result.startswith("skipped: ") and "symlink" in done.result
    # A file over an existing symlink is not written through it either.
    done = s.add(_info("evil", data=b"pwn"), ("evil",), io.BytesIO(b"pwn"))
    assert done.result == "skipped: exists in the target, not overwritten"
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_special_files_and_hard_links_are_not_created(sink):
    target, s = sink
    for kind, name in (
        (tarfile.FIFOTYPE, "fifo"),
        (tarfile.CHRTYPE, "tty"),
        (tarfile.BLKTYPE, "sda"),
    ):
        done = s.add(_info(name, kind), (name,), None)
        assert done.result == "skipped: special file, not created"
    done = s.add(_info("h", tarfile.LNKTYPE, link="etc/shadow"), ("h",), None)
    assert done.result.startswith("skipped: hard link")
    assert list(target.iterdir()) == []


def test_existing_files_are_not_overwritten(sink):
    target, s = sink
    (target / "f").write_bytes(b"mine")
    done = s.add(_info("f", data=b"theirs"), ("f",), io.BytesIO(b"theirs"))
    assert done.result.startswith("skipped: exists")
    assert (target / "f").read_bytes() == b"mine"


def test_the_tar_stream_holds_only_safe_members():
    out = io.BytesIO()
    t = TarSink(out)
    t.add(_info(".", tarfile.DIRTYPE), ("etc",), None)
    t.add(
        _info("x", mode=0o6755, data=b"abc"), ("etc", "x"), io.BytesIO(b"abc")
    )
    assert t.add(
        _info("p", tarfile.FIFOTYPE), ("etc", "p"), None
    ).result.startswith("skipped")
    t.finish()
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"etc", "etc/x"}
        assert members["etc/x"].mode == 0o755
        assert tar.extractfile(members["etc/x"]).read() == b"abc"
