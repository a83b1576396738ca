"""Disk images for the file-level restore tests, made with libguestfs in a
local sparse file (the real mkfs, parted and LVM tools, in the appliance),
then written into a Cinder volume's RBD image, which cinderbak backs up.

Layouts: ``ext4-gpt`` (ext4 in a GPT partition), ``lvm-xfs`` (an MBR
partition holding an LVM PV, VG ``vgNAME``, LV ``data`` with XFS),
``ext4-whole`` (ext4 on the whole disk). Files are {path: (content,
mode, mtime)}; symlinks and FIFOs can be added for hostile images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from tests import localstack

MIB = 1024 * 1024
CHUNK = 4 * MIB


@dataclasses.dataclass(frozen=True)
class File:
    content: bytes
    mode: int = 0o644
    mtime: int = 1_700_000_000

    @property
    def md5(self) -> str:
        return hashlib.md5(self.content, usedforsecurity=False).hexdigest()


def _handle(path: Path):
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
    settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    g.set_backend_settings(settings.split(":") if settings else [])
    g.set_memsize(512)
    g.add_drive_opts(str(path), format="raw")
    g.launch()
    return g


def data_device(layout: str, vg: str = "vgdata") -> str:
    return {
        "ext4-gpt": "/dev/sda1",
        "lvm-xfs": f"/dev/{vg}/data",
        "ext4-whole": "/dev/sda",
    }[layout]


def build(
    path: Path,
    size: int,
    layout: str,
    files: dict[str, File],
    *,
    vg: str = "vgdata",
    symlinks: dict[str, str] | None = None,
    fifos: tuple[str, ...] = (),
) -> None:
    """Make a new image file with ``layout`` holding ``files``."""
    with open(path, "wb") as f:
        f.truncate(size)
    g = _handle(path)
    try:
        device = data_device(layout, vg)
        if layout == "ext4-gpt":
            g.part_disk("/dev/sda", "gpt")
            g.mkfs("ext4", device)
        elif layout == "lvm-xfs":
            g.part_disk("/dev/sda", "mbr")
            g.pvcreate("/dev/sda1")
            g.vgcreate(vg, ["/dev/sda1"])
            g.lvcreate("data", vg, size // MIB - 16)  # xfs needs 300 MiB
            g.mkfs("xfs", device)
        elif layout == "ext4-whole":
            g.mkfs("ext4", device)
        else:
            raise ValueError(layout)
        g.mount(device, "/")
        _write(g, files, symlinks or {}, fifos)
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


def change(
    path: Path,
    layout: str,
    files: dict[str, File],
    *,
    vg: str = "vgdata",
    remove: tuple[str, ...] = (),
) -> None:
    """Write (or overwrite) ``files`` and remove ``remove`` in an image."""
    g = _handle(path)
    try:
        g.mount(data_device(layout, vg), "/")
        for p in remove:
            g.rm_rf(p)
        _write(g, files, {}, ())
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


def _write(g, files, symlinks, fifos) -> None:
    for p, f in sorted(files.items()):
        g.mkdir_p(os.path.dirname(p))
        g.write(p, f.content)
        g.chmod(f.mode, p)
        g.utimens(p, f.mtime, 0, f.mtime, 0)
    for p, target in sorted(symlinks.items()):
        g.mkdir_p(os.path.dirname(p))
        g.ln_s(target, p)
    for p in fifos:
        g.mkdir_p(os.path.dirname(p))
        g.mkfifo(0o644, p)


def write_to_volume(
    stack: localstack.Stack,
    volume_id: str,
    image: Path,
    previous: Path | None = None,
) -> int:
    """Copy a local image into a Cinder volume's RBD image (cluster A),
    skipping holes, and chunks equal to ``previous`` (the image written
    before, so an incremental backup moves only what changed). Return
    the bytes written."""
    import rbd

    written = 0
    with (
        localstack.ioctx(stack, "a") as io,
        rbd.Image(io, f"volume-{volume_id}") as img,
        open(image, "rb") as src,
    ):
        old = open(previous, "rb") if previous else None
        try:
            fd = src.fileno()
            end = os.fstat(fd).st_size
            offset = 0
            while offset < end:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:
                    break  # only a hole remains
                stop = os.lseek(fd, start, os.SEEK_HOLE)
                pos = start - start % CHUNK
                while pos < stop:
                    src.seek(pos)
                    data = src.read(min(CHUNK, end - pos))
                    same = False
                    if old is not None:
                        old.seek(pos)
                        same = old.read(len(data)) == data
                    if not same:
                        img.write(data, pos)
                        written += len(data)
                    pos += CHUNK
                offset = stop
            img.flush()
        finally:
            if old is not None:
                old.close()
    return written
