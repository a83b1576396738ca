"""Which filesystem of a backup to open, how to mount it read-only, and
the rows the ``cinderbak files`` commands print. Pure: no I/O.

A Cinder volume holds a filesystem on the whole disk, a partition table
(MBR or GPT) with filesystems in partitions, or LVM physical volumes with
logical volumes. The engine (``cinderbak/backupfs.py``) reports what it
found; :func:`pick_filesystem` chooses one, or names the choices.
"""

from __future__ import annotations

import dataclasses
import datetime
import stat

from cinderbak.filepaths import escape_name

EXT = frozenset({"ext2", "ext3", "ext4"})
XFS = "xfs"
# What libguestfs mounts for us; other types are listed, never opened.
SUPPORTED = EXT | {XFS, "btrfs", "vfat", "ntfs"}
# Options that read a filesystem whose journal or log was not replayed
# (a crash-consistent copy) without writing anything: ext3/4 skip the
# journal (noload), xfs skips log recovery (norecovery).
NO_REPLAY_OPTIONS = {
    "ext3": "ro,noload",
    "ext4": "ro,noload",
    XFS: "ro,norecovery",
}


class LayoutError(LookupError):
    """No filesystem to open, or the one asked for is not there."""


@dataclasses.dataclass(frozen=True)
class Found:
    """One filesystem the engine found on a backup's disk."""

    device: str  # engine's name: /dev/sda, /dev/sda2, /dev/vg/lv
    fstype: str  # "ext4", "xfs", "swap", "unknown", ...
    size: int  # bytes of the device holding it
    label: str = ""

    @property
    def supported(self) -> bool:
        return self.fstype in SUPPORTED


def describe(found: list[Found]) -> str:
    """One line naming every filesystem found, for messages."""
    if not found:
        return "none"
    return ", ".join(
        f"{f.device} ({f.fstype}"
        + (f", label {escape_name(f.label)}" if f.label else "")
        + f", {f.size // 2**20} MiB)"
        for f in found
    )


def pick_filesystem(found: list[Found], wanted: str | None = None) -> Found:
    """The filesystem to open: ``wanted`` (a device name as listed), else
    the only supported one, else the largest supported one (a data or root
    volume beside a small /boot).

    Raise LayoutError when ``wanted`` is not a supported filesystem found,
    or none is.
    """
    usable = [f for f in found if f.supported]
    if wanted is not None:
        for f in usable:
            if f.device == wanted:
                return f
        raise LayoutError(
            f"no supported filesystem {escape_name(wanted)} in this backup; "
            f"found: {describe(found)}"
        )
    if not usable:
        raise LayoutError(
            f"no filesystem cinderbak can open in this backup; found: "
            f"{describe(found)}"
        )
    # Largest first; the device name breaks ties, so the choice is stable.
    return min(usable, key=lambda f: (-f.size, f.device))


def mount_options(fstype: str, needs_recovery: bool) -> str:
    """Options for a read-only mount that writes nothing. A filesystem
    that needs recovery is mounted without replaying its journal or log;
    one without a replay-skipping option cannot be opened then.

    Raise LayoutError for such a filesystem.
    """
    if not needs_recovery:
        return "ro"
    try:
        return NO_REPLAY_OPTIONS[fstype]
    except KeyError:
        raise LayoutError(
            f"{fstype} needs recovery and cannot be read without it"
        ) from None


def recovery_note(fstype: str, needs_recovery: bool) -> str:
    """What the output says about recovery (empty when none was needed)."""
    if not needs_recovery:
        return ""
    what = "log" if fstype == XFS else "journal"
    return (
        f"the {fstype} filesystem needs recovery (crash-consistent copy): "
        f"read without replaying its {what}, so the newest writes may be "
        "missing or inconsistent"
    )


# -- rows -------------------------------------------------------------------

ENTRY_COLUMNS = ("name", "type", "size", "mode", "mtime", "target")

_TYPES = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "char-device"),
    (stat.S_ISBLK, "block-device"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


def file_type(mode: int) -> str:
    for test, name in _TYPES:
        if test(mode):
            return name
    return "unknown"


def iso_time(seconds: int) -> str:
    """UTC, second precision; out-of-range times (a hostile or damaged
    inode) are shown as the raw number."""
    try:
        when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def entry_row(
    name: str, mode: int, size: int, mtime: int, target: str = ""
) -> tuple[str, str, int, str, str, str]:
    """One listed entry: escaped name, type, size, ``ls -l`` mode, mtime,
    escaped symlink target."""
    return (
        escape_name(name),
        file_type(mode),
        size,
        stat.filemode(mode),
        iso_time(mtime),
        escape_name(target),
    )
