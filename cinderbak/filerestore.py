"""File-level restore: open one backup read-only, list and fetch files.

The backup is read where it lies when it can be: Cinder's Ceph backup
driver keeps it as an RBD snapshot on the backup cluster, read through
the read-only ``[backup_cluster]`` client. Otherwise (another backup
driver, no ``[backup_cluster]``, or no such image) it is restored, as
``verify`` does, over a scratch volume of the service project, read on
the volume cluster through the read-only ``[volume_cluster]`` client, and
the scratch volume is deleted afterwards (journaled, so start-up recovery
deletes it if cinderbak dies meanwhile).

Before anything from the backup is shown, the command names the backup,
its volume and its project (``announce``); ``--project`` refuses a backup
of any other project.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fnmatch
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Protocol

from oslo_log import log as logging

from cinderbak import backupfs, filelayout, filepaths, verify
from cinderbak.backup_cluster import BackupCluster
from cinderbak.extract import Done
from cinderbak.filepaths import escape_name
from cinderbak.journal import states
from cinderbak.volume_cluster import image_name

LOG = logging.getLogger(__name__)

RUN_PREFIX = "files:"
SCRATCH_TIMEOUT = 6 * 3600


class FilesError(RuntimeError):
    """The backup cannot be opened for this request; nothing was shown."""


class Sink(Protocol):
    def add(
        self,
        info: tarfile.TarInfo,
        parts: tuple[str, ...],
        data: IO[bytes] | None,
    ) -> Done: ...


@dataclasses.dataclass(frozen=True)
class Subject:
    """Whose backup this is, said before anything of it is shown."""

    backup_id: str
    volume_id: str
    project_id: str
    project_name: str
    volume_name: str
    created_at: str
    status: str
    incremental: bool


def check_subject(subject: Subject, project: str | None) -> None:
    """Refuse a backup that is not available, or not of ``project`` (an id
    or a name) when one is given.

    Raise FilesError.
    """
    if project is not None and project not in (
        subject.project_id,
        subject.project_name,
    ):
        raise FilesError(
            f"backup {subject.backup_id} belongs to project "
            f"{subject.project_id}, not {escape_name(project)}: not opened"
        )
    if subject.status != "available":
        raise FilesError(
            f"backup {subject.backup_id} is {subject.status}: only an "
            "available backup can be opened"
        )


def subject_line(subject: Subject) -> str:
    kind = "incremental" if subject.incremental else "full"
    return (
        f"backup {subject.backup_id} ({kind}, {subject.created_at}) of "
        f"volume {subject.volume_id} ({escape_name(subject.volume_name)}) "
        f"in project {subject.project_id} "
        f"({escape_name(subject.project_name)})"
    )


def opened_lines(source: str, opened: backupfs.Opened) -> list[str]:
    """What was opened, how, and whether it needed recovery."""
    chosen = opened.chosen
    others = [f for f in opened.found if f != chosen]
    lines = [
        f"read from {source} (appliance up in {opened.launch_seconds:.1f} s)",
        f"filesystem {chosen.device} ({chosen.fstype}), mounted "
        f"{opened.options}"
        + (f"; also found: {filelayout.describe(others)}" if others else ""),
    ]
    note = filelayout.recovery_note(chosen.fstype, opened.needs_recovery)
    if note:
        lines.append("NEEDS RECOVERY: " + note)
    return lines


def matches(paths: list[str], pattern: str) -> list[str]:
    """Paths (relative, from find) whose last component matches the
    shell pattern, case-sensitively, in order."""
    return [
        p for p in paths if fnmatch.fnmatchcase(posixpath.basename(p), pattern)
    ]


# -- opening -------------------------------------------------------------


def subject_of(parts: Any, backup_id: str) -> tuple[Any, Subject]:
    """The backup and who it belongs to, as Cinder and Keystone say."""
    cloud = parts.cloud
    storage = cloud.service.block_storage
    backup = cloud.call(storage.get_backup, backup_id)
    project_id = backup.project_id or ""
    project_name = "?"
    with contextlib.suppress(Exception):
        project_name = cloud.call(
            cloud.service.identity.get_project, project_id
        ).name
    volume_name = "deleted"
    with contextlib.suppress(Exception):
        volume = cloud.call(storage.get_volume, backup.volume_id)
        volume_name = volume.name or ""
    return backup, Subject(
        backup_id=backup.id,
        volume_id=backup.volume_id,
        project_id=project_id,
        project_name=project_name,
        volume_name=volume_name,
        created_at=str(backup.created_at),
        status=backup.status,
        incremental=bool(backup.is_incremental),
    )


@contextlib.contextmanager
def open_backup(
    parts: Any,
    backup_id: str,
    *,
    project: str | None = None,
    filesystem: str | None = None,
    announce: Callable[[str], None],
    allow_restore: bool = True,
) -> Iterator[backupfs.BackupFs]:
    """Yield the backup's filesystem, mounted read-only.

    Raise FilesError when the backup may not or cannot be opened.
    """
    backup, subject = subject_of(parts, backup_id)
    check_subject(subject, project)
    announce(subject_line(subject))
    settings = backupfs.settings_from_conf(parts.conf)
    cluster = BackupCluster.from_conf(parts.conf)
    try:
        located = (
            cluster.locate(backup.volume_id, backup.id) if cluster else None
        )
        if cluster is not None and located is not None:
            pool, image, snap = located
            drive = backupfs.RbdDrive(
                pool,
                image,
                snap,
                cluster.user,
                cluster.conffile,
                cluster.keyring,
            )
            source = (
                f"ceph {drive.spec} on the backup cluster, read-only as "
                f"client.{cluster.user}"
            )
            with _opened(drive, settings, filesystem, source, announce) as fs:
                yield fs
            return
    finally:
        if cluster is not None:
            cluster.close()
    why = (
        "no [backup_cluster] configured"
        if cluster is None
        else "not found on the backup cluster (not the Ceph backup driver?)"
    )
    if not allow_restore:
        raise FilesError(f"backup {backup.id}: {why}")
    announce(f"{why}: restoring it to a scratch volume first")
    with _scratch_restore(parts, backup) as (drive, scratch_id):
        source = (
            f"scratch volume {scratch_id} (a restore of the backup; deleted "
            f"afterwards), read-only as client.{drive.user}"
        )
        with _opened(drive, settings, filesystem, source, announce) as fs:
            yield fs


@contextlib.contextmanager
def _opened(
    drive: backupfs.RbdDrive,
    settings: dict[str, Any],
    filesystem: str | None,
    source: str,
    announce: Callable[[str], None],
) -> Iterator[backupfs.BackupFs]:
    fs = backupfs.BackupFs(drive, **settings)
    try:
        try:
            opened = fs.open(filesystem)
        except (backupfs.BackupFsError, filelayout.LayoutError) as exc:
            raise FilesError(str(exc)) from exc
        for line in opened_lines(source, opened):
            announce(line)
        yield fs
    finally:
        fs.close()


@contextlib.contextmanager
def _scratch_restore(
    parts: Any, backup: Any
) -> Iterator[tuple[backupfs.RbdDrive, str]]:
    """Restore the backup over a scratch volume (as verify does) and yield
    a drive of it on the volume cluster; delete it afterwards."""
    if parts.volume_cluster is None:
        raise FilesError(
            "reading a restored copy needs [volume_cluster] conf (a "
            "read-only Ceph client of the volume cluster)"
        )
    verifier = verify.Verifier(parts)
    now = datetime.datetime.now(datetime.UTC)
    run = parts.journal.begin_run(
        RUN_PREFIX + "restore",
        backup.id,
        now,
        project_id=backup.project_id,
        attrs={"volume_id": backup.volume_id, "size_gb": backup.size},
    )
    parts.journal.start_run(run.id)
    row = verify.VerifyRow(
        backup.id, backup.volume_id, backup.project_id or "", "-", "-"
    )
    scratch_id = None
    state = states.FAILED
    try:
        scratch_id = verifier.scratch_volume(run.id, backup)
        verifier.restore_into(run.id, backup, scratch_id, row, SCRATCH_TIMEOUT)
        cluster = parts.volume_cluster
        name = image_name(scratch_id)
        pool = cluster.pool_of(name)
        if pool is None:
            raise FilesError(
                f"scratch volume {scratch_id} is not in pool(s) "
                f"{', '.join(cluster.pools)} of the volume cluster"
            )
        yield (
            backupfs.RbdDrive(
                pool,
                name,
                None,
                cluster.user,
                cluster.conffile,
                cluster.keyring,
            ),
            scratch_id,
        )
        state = states.SUCCEEDED
    finally:
        if scratch_id:
            verifier.delete_scratch_volume(run.id, scratch_id, row)
        parts.journal.finish_run(
            run.id, state, {"scratch": scratch_id, "problems": row.problems}
        )


# -- reading ---------------------------------------------------------------


def list_rows(fs: backupfs.BackupFs, path: str) -> list[tuple[Any, ...]]:
    """``files ls``: the entries of a directory (or one entry)."""
    path = filepaths.backup_path(path)
    st = fs.lstat(path)
    if filelayout.file_type(st.mode) != "dir":
        target = (
            fs.readlink(path)
            if filelayout.file_type(st.mode) == "symlink"
            else ""
        )
        return [
            filelayout.entry_row(
                posixpath.basename(path) or "/",
                st.mode,
                st.size,
                st.mtime,
                target,
            )
        ]
    rows = []
    for entry in fs.listdir(path):
        if entry.stat is None:
            rows.append((escape_name(entry.name), "unknown", 0, "?", "", ""))
            continue
        rows.append(_entry_row(entry))
    return rows


def _entry_row(entry: backupfs.Entry) -> tuple[Any, ...]:
    """One listed entry (with its stat) as a table row."""
    stat = entry.stat
    assert stat is not None  # callers skip or mark the entries without
    return filelayout.entry_row(
        entry.name, stat.mode, stat.size, stat.mtime, entry.target
    )


def find_rows(
    fs: backupfs.BackupFs, pattern: str, under: str = "/"
) -> list[tuple[Any, ...]]:
    """``files find``: entries whose name matches a shell pattern."""
    under = filepaths.backup_path(under)
    found = matches(fs.find(under), pattern)
    full = [posixpath.join(under, p) for p in found]
    rows = []
    for entry in fs.entries_of(full):
        if entry.stat is None:
            continue
        rows.append(_entry_row(entry))
    return rows


_SPECIAL_TYPES = {
    "char-device": tarfile.CHRTYPE,
    "block-device": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclasses.dataclass
class Fetched:
    rows: list[Done]
    bytes: int
    seconds: float


def fetch(
    fs: backupfs.BackupFs,
    paths: list[str],
    sink: Sink,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Fetched:
    """``files get``: each path (file, symlink or whole directory) into
    ``sink``, under its full path relative to the backup's root.

    A directory's files come one download each: twice the throughput of
    libguestfs's tar-out without KVM (20 vs 9 MiB/s here), where the
    appliance's tar is the bottleneck. A tree of more than TAR_ABOVE
    entries (the per-call cost wins) or with a name the Python binding
    cannot pass back (not UTF-8) comes as one tar stream instead.
    """
    started = clock()
    rows: list[Done] = []
    for raw in paths:
        path = filepaths.backup_path(raw)
        prefix = filepaths.path_parts(path)
        st = fs.lstat(path)
        if filelayout.file_type(st.mode) != "dir":
            target = ""
            if filelayout.file_type(st.mode) == "symlink":
                target = fs.readlink(path)
            rows.append(_one(fs, path, prefix, st, target, sink))
            continue
        rel = fs.find(path)
        entries = fs.entries_of([posixpath.join(path, r) for r in rel])
        if (
            len(entries) != len(rel)
            or len(entries) > TAR_ABOVE
            or any(e.stat is None for e in entries)
        ):
            rows.extend(_tarred(fs, path, prefix, sink))
            continue
        rows.append(_one(fs, path, prefix, st, "", sink))
        for r, entry in zip(rel, entries, strict=True):
            assert entry.stat is not None
            try:
                parts = filepaths.member_parts(prefix, r)
            except filepaths.UnsafePath as exc:
                rows.append(_skipped(r, f"skipped: {exc}"))
                continue
            rows.append(
                _one(fs, entry.name, parts, entry.stat, entry.target, sink)
            )
    total = sum(
        r.size for r in rows if r.kind == "file" and r.result == "written"
    )
    return Fetched(rows, total, clock() - started)


TAR_ABOVE = 2000


def _one(
    fs: backupfs.BackupFs,
    path: str,
    parts: tuple[str, ...],
    st: backupfs.Stat,
    target: str,
    sink: Sink,
) -> Done:
    """One entry, from its lstat: a file's content is downloaded."""
    kind = filelayout.file_type(st.mode)
    info = tarfile.TarInfo(posixpath.basename(path))
    info.mode, info.mtime, info.size = st.mode, st.mtime, 0
    if kind == "file":
        info.type, info.size = tarfile.REGTYPE, st.size
        with fs.download(path) as data:
            done: Done = sink.add(info, parts, data)
        return done
    if kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, target
    else:  # a special file: the sink skips it and says so
        info.type = _SPECIAL_TYPES.get(kind, tarfile.FIFOTYPE)
    done = sink.add(info, parts, None)
    return done


def _tarred(
    fs: backupfs.BackupFs, path: str, prefix: tuple[str, ...], sink: Sink
) -> list[Done]:
    """A whole directory through one tar stream."""
    rows = []
    with fs.tar_out(path) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                try:
                    where = filepaths.member_parts(prefix, member.name)
                except filepaths.UnsafePath as exc:
                    rows.append(_skipped(member.name, f"skipped: {exc}"))
                    continue
                data = tar.extractfile(member) if member.isreg() else None
                rows.append(sink.add(member, where, data))
    return rows


def _skipped(name: str, why: str) -> Done:
    return Done(escape_name(name), "?", 0, why)
