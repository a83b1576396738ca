"""Write files fetched from a backup, without ever leaving the target.

Members arrive as tar headers (from libguestfs's tar-out of a directory,
or made from one file's lstat) with checked relative parts
(``filepaths.member_parts``). :class:`DirSink` writes them under ``--to
DIR``, walking down with one directory file descriptor per level, each
opened with ``O_NOFOLLOW``: a symlink that the backup puts in the way
(``etc -> /etc``, then ``etc/passwd``) stops that member instead of being
followed. Files are created with ``O_EXCL`` (never overwriting, never
through a link), symlinks are recreated as links and never followed,
device nodes, FIFOs and sockets are not created. Mode (without
set-user-ID, set-group-ID and sticky bits) and mtime are kept; owners
are not (the files belong to whoever fetched them).

:class:`TarSink` re-emits the same checked members as a tar stream, for
``--to -``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import tarfile
from typing import IO

from cinderbak.filepaths import escape_name, safe_mode

COPY_CHUNK = 1 << 20
_WALK_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
)
ROW_COLUMNS = ("path", "type", "size", "result")


class Skip(Exception):
    """This member is not written; the message says why."""


@dataclasses.dataclass(frozen=True)
class Done:
    """What happened to one member."""

    path: str  # escaped, relative to the target
    kind: str
    size: int
    result: str  # "written", or "skipped: <why>"

    def as_tuple(self) -> tuple[str, str, int, str]:
        return (self.path, self.kind, self.size, self.result)


def kind_of(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr():
        return "char-device"
    if info.isblk():
        return "block-device"
    if info.isfifo():
        return "fifo"
    return "unknown"


def shown(parts: tuple[str, ...]) -> str:
    return escape_name("/".join(parts)) or "."


class DirSink:
    """Writes checked members under one directory, never outside it."""

    def __init__(self, root: str) -> None:
        # The operator names the target; from there on nothing is followed.
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._dirs: dict[tuple[str, ...], tuple[int, float]] = {}

    def close(self) -> None:
        os.close(self.root_fd)

    def add(
        self,
        info: tarfile.TarInfo,
        parts: tuple[str, ...],
        data: IO[bytes] | None,
    ) -> Done:
        """Write one member; a member that cannot be written safely is
        skipped and said so."""
        kind = kind_of(info)
        size = info.size if info.isreg() else 0
        try:
            self._add(info, parts, data)
        except Skip as why:
            return Done(shown(parts), kind, size, f"skipped: {why}")
        return Done(shown(parts), kind, size, "written")

    def _add(
        self,
        info: tarfile.TarInfo,
        parts: tuple[str, ...],
        data: IO[bytes] | None,
    ) -> None:
        if info.isdir():
            if parts:  # the target itself keeps its own mode and mtime
                self._mkdir(parts)
                self._dirs[parts] = (safe_mode(info.mode), info.mtime)
            return
        if not parts:
            raise Skip("no name")
        if not (info.isreg() or info.issym() or info.islnk()):
            raise Skip("special file, not created")
        parent = self._parent(parts[:-1])
        name = parts[-1]
        try:
            if info.isreg():
                self._write(parent, name, info, data)
            elif info.issym():
                os.symlink(info.linkname, name, dir_fd=parent)
                os.utime(
                    name,
                    ns=(_ns(info.mtime),) * 2,
                    dir_fd=parent,
                    follow_symlinks=False,
                )
            else:
                raise Skip("hard link, not created (fetch its target)")
        except FileExistsError:
            raise Skip("exists in the target, not overwritten") from None
        finally:
            os.close(parent)

    def _write(
        self,
        parent: int,
        name: str,
        info: tarfile.TarInfo,
        data: IO[bytes] | None,
    ) -> None:
        fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            if data is not None:
                shutil.copyfileobj(data, out, COPY_CHUNK)
            out.flush()
            os.fchmod(fd, safe_mode(info.mode))
            os.utime(fd, ns=(_ns(info.mtime),) * 2)

    def _parent(self, parts: tuple[str, ...]) -> int:
        """An fd of directory ``parts`` under the root, made if missing;
        raise Skip when a component is a symlink or not a directory."""
        fd = os.dup(self.root_fd)
        for i, part in enumerate(parts):
            try:
                try:
                    child = os.open(part, _WALK_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self._dirs.setdefault(parts[: i + 1], (0o755, -1.0))
                    child = os.open(part, _WALK_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Skip(
                        f"{shown(parts[: i + 1])} is a symlink or not a "
                        "directory in the target; not followed"
                    ) from None
                raise
            os.close(fd)
            fd = child
        return fd

    def _mkdir(self, parts: tuple[str, ...]) -> None:
        os.close(self._parent(parts))

    def finish(self) -> None:
        """Give directories their mode and mtime, deepest first (writing
        into a directory changes its mtime; a read-only one could not be
        written into)."""
        for parts in sorted(self._dirs, key=len, reverse=True):
            mode, mtime = self._dirs[parts]
            try:
                fd = self._parent(parts)
            except Skip:
                continue
            try:
                os.fchmod(fd, mode)
                if mtime >= 0:
                    os.utime(fd, ns=(_ns(mtime),) * 2)
            finally:
                os.close(fd)


class TarSink:
    """Re-emits checked members as an uncompressed tar stream."""

    def __init__(self, out: IO[bytes]) -> None:
        self.tar = tarfile.open(
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT
        )

    def add(
        self,
        info: tarfile.TarInfo,
        parts: tuple[str, ...],
        data: IO[bytes] | None,
    ) -> Done:
        kind = kind_of(info)
        size = info.size if info.isreg() else 0
        if not (info.isreg() or info.isdir() or info.issym()):
            why = (
                "hard link, not sent (fetch its target)"
                if info.islnk()
                else "special file, not sent"
            )
            return Done(shown(parts), kind, size, f"skipped: {why}")
        if not parts and not info.isdir():
            return Done(".", kind, size, "skipped: no name")
        member = tarfile.TarInfo("/".join(parts) or ".")
        member.type = info.type
        member.mode = safe_mode(info.mode)
        member.mtime = info.mtime
        member.uid, member.gid = info.uid, info.gid
        member.linkname = info.linkname if info.issym() else ""
        member.size = size
        self.tar.addfile(member, data if info.isreg() else None)
        return Done(shown(parts), kind, size, "written")

    def finish(self) -> None:
        self.tar.close()

    def close(self) -> None:
        """The stream belongs to the caller."""


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000)
