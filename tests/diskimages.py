"""Disk images for the file-level restore tests, made in a local sparse
file with the real tools, then written into a Cinder volume's RBD image,
which cinderbak backs up: ext4 in a GPT partition (sfdisk, mke2fs -d from
a directory, changed in place with debugfs) and XFS on LVM (parted, LVM
and mkfs.xfs in a libguestfs appliance: LVM needs block devices).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
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


def build_lvm_xfs(
    images: list[tuple[Path, dict[str, File]]],
    size: int,
    *,
    vg: str = "vgdata",
    dirty_last: bool = False,
) -> None:
    """Make each image file: an MBR partition holding an LVM PV, VG ``vg``
    (the same name in every image), LV ``data`` with XFS holding its
    files. Host tools cannot make LVM on a plain file, so one libguestfs
    appliance makes them all, showing LVM one disk at a time (two VGs of
    one name on two visible disks would clash).

    ``dirty_last``: the last XFS is left as a crash leaves it: its files
    are written and unmounted cleanly, then it is mounted again, a file
    ``/.dirty`` is created and synced, and the appliance is killed, so the
    log holds a transaction and no unmount record (needs recovery)."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
    try:
        g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
        settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        g.set_backend_settings(settings.split(":") if settings else [])
        g.set_memsize(512)
        for path, _files in images:
            with open(path, "wb") as f:
                f.truncate(size)
            g.add_drive_opts(str(path), format="raw")
        g.launch()
        for disk, (_path, files) in zip(g.list_devices(), images, strict=True):
            g.lvm_set_filter([disk])
            g.part_disk(disk, "mbr")
            g.pvcreate(f"{disk}1")
            g.vgcreate(vg, [f"{disk}1"])
            g.lvcreate("data", vg, size // MIB - 16)  # xfs needs 300 MiB
            device = f"/dev/{vg}/data"
            g.mkfs("xfs", device)
            g.mount(device, "/")
            for p, f in sorted(files.items()):
                g.mkdir_p(os.path.dirname(p))
                g.write(p, f.content)
                g.chmod(f.mode, p)
                g.utimens(p, f.mtime, 0, f.mtime, 0)
            g.umount_all()
            if dirty_last and disk == g.list_devices()[-1]:
                g.mount(device, "/")
                g.touch("/.dirty")
                g.sync()
                g.set_autosync(False)  # no umount on the way out
                g.kill_subprocess()
                return
            g.vg_activate(False, [vg])
        g.shutdown()
    finally:
        g.close()


def change_ext4_in_place(
    path: Path,
    files: dict[str, File],
    *,
    remove: tuple[str, ...] = (),
    remove_dirs: tuple[str, ...] = (),
    work: Path,
) -> None:
    """Change the ext4 of build_ext4_gpt_from_dir in place with debugfs
    (no mount): replace or add ``files`` (in existing directories),
    remove files, then (empty) directories."""
    commands = [f"rm {p}" for p in remove]
    commands += [f"rmdir {p}" for p in remove_dirs]
    for n, (p, f) in enumerate(sorted(files.items())):
        local = work / f"debugfs-{n}"
        local.write_bytes(f.content)
        head, _, name = p.rpartition("/")
        commands += [
            f"cd {head or '/'}",
            f"rm {name}",  # fails harmlessly for a new file
            f"write {local} {name}",
            f"sif {name} mode 0{0o100000 | f.mode:o}",
            f"sif {name} mtime {f.mtime}",
            "cd /",
        ]
    script = work / "debugfs.cmds"
    script.write_text("\n".join(commands) + "\n")
    subprocess.run(
        ["debugfs", "-w", "-f", str(script), f"{path}?offset={MIB}"],
        capture_output=True,
        check=True,
        timeout=120,
    )


def build_ext4_gpt_from_dir(path: Path, size: int, source: Path) -> None:
    """Make ``path``: a GPT with one partition from 1 MiB to the end,
    holding an ext4 populated from directory ``source`` (modes, mtimes,
    symlinks and FIFOs as they are there), with the host's sfdisk and
    mke2fs -d: no appliance, a second instead of twenty."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["sfdisk", "--quiet", "--label", "gpt", str(path)],
        input="start=2048, type=linux\n",
        text=True,
        check=True,
        timeout=60,
    )
    blocks = (size - MIB - MIB) // 4096  # GPT's backup header at the end
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            f"offset={MIB}",
            "-d",
            str(source),
            str(path),
            str(blocks),
        ],
        check=True,
        timeout=600,
    )


def populate(root: Path, files: dict[str, File]) -> None:
    """Write ``files`` under a host directory, for build_ext4_gpt_from_dir."""
    for p, f in files.items():
        target = root / p.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
        os.chmod(target, f.mode)
        os.utime(target, (f.mtime, f.mtime))


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
