"""Open one backup's disk read-only and read its files, with libguestfs.

Why libguestfs: it reads the RBD image straight from the backup cluster
through QEMU's RBD driver, and does the filesystem work inside a small
throw-away appliance VM: partition tables, LVM (activated in the
appliance's own kernel, so two backups whose volume groups share a name
never meet, on the host or each other), ext2/3/4, XFS, NTFS, btrfs. The
host never mounts or maps anything from a tenant's disk, so a hostile
filesystem meets a disposable kernel, not the operator's.

Nothing is written: the drive is added read-only (QEMU opens the RBD
snapshot read-only, with libguestfs's local overlay above it), the block
device is set read-only in the appliance before mounting, and a
filesystem that needs recovery is mounted with ``noload`` (ext3/4) or
``norecovery`` (xfs) instead of replaying its journal.

QEMU does not read the RBD image itself: its RBD driver always opens
images read-write, which a read-only cephx user may not do. An nbdkit
process runs ``cinderbak/nbd_rbd.py``, which opens the image read-only
with librbd, and serves it on a unix socket in a private directory; the
appliance reads that. nbdkit gets paths (ceph.conf, keyring), never the
key, on its command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from oslo_config import cfg

from cinderbak import filelayout
from cinderbak.filelayout import Found

GROUP = "files"

OPTS = [
    cfg.StrOpt(
        "libguestfs_backend",
        default="direct",
        help="libguestfs backend ('direct': libguestfs runs QEMU itself; "
        "'libvirt' needs a libvirtd).",
    ),
    cfg.ListOpt(
        "libguestfs_backend_settings",
        default=[],
        help="libguestfs backend settings. 'force_tcg' where KVM is "
        "present but unusable (nested PVM machines: the appliance hangs "
        "otherwise).",
    ),
    cfg.IntOpt(
        "appliance_memory_mb",
        default=512,
        min=256,
        help="Memory of the libguestfs appliance that reads one backup.",
    ),
]

# Names per lstatnslist call: keeps each reply well under libguestfs's
# message size limit.
STAT_BATCH = 500
NBDKIT = "nbdkit"
PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbd_rbd.py")
NBDKIT_START_TIMEOUT = 60


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


class BackupFsError(RuntimeError):
    """The backup's disk cannot be opened or read."""


@dataclasses.dataclass(frozen=True)
class RbdDrive:
    """A read-only RBD image (at a snapshot) and the client reading it."""

    pool: str
    image: str
    snapshot: str | None
    user: str
    ceph_conf: str
    keyring: str | None = None

    @property
    def spec(self) -> str:
        name = f"{self.pool}/{self.image}"
        return f"{name}@{self.snapshot}" if self.snapshot else name


@dataclasses.dataclass(frozen=True)
class Stat:
    mode: int
    size: int
    mtime: int


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # may hold surrogate escapes for bytes that are not UTF-8
    stat: Stat | None  # None: the name cannot be passed back to libguestfs
    target: str = ""


@dataclasses.dataclass(frozen=True)
class Opened:
    """What was opened: every filesystem found, the one mounted, and
    whether it needed recovery."""

    found: list[Found]
    chosen: Found
    needs_recovery: bool
    options: str
    launch_seconds: float


def settings_from_conf(conf: cfg.ConfigOpts) -> dict[str, Any]:
    group = conf[GROUP]
    return {
        "backend": group.libguestfs_backend,
        "backend_settings": list(group.libguestfs_backend_settings),
        "memsize": group.appliance_memory_mb,
    }


def _stat(st: dict[str, int]) -> Stat:
    return Stat(st["st_mode"], st["st_size"], st["st_mtime_sec"])


class BackupFs:
    """One appliance with one backup's disk; use as a context manager."""

    def __init__(
        self,
        drive: RbdDrive,
        *,
        backend: str = "direct",
        backend_settings: list[str] | None = None,
        memsize: int = 512,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import guestfs  # Debian's python3-guestfs, linked into the venv

        self.drive = drive
        self.g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
        self.g.set_backend(backend)
        self.g.set_backend_settings(list(backend_settings or []))
        self.g.set_memsize(memsize)
        self.g.set_identifier("cinderbak-files")
        self._clock = clock
        self.opened: Opened | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="cinderbak-files-")

    def __enter__(self) -> BackupFs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.g.shutdown()
        self.g.close()
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None
        self._scratch.cleanup()

    def _serve(self) -> str:
        """Start nbdkit serving the drive read-only on a unix socket in
        our private (0700) directory; return the socket's path."""
        socket = os.path.join(self._scratch.name, "nbd.sock")
        log = os.path.join(self._scratch.name, "nbdkit.log")
        params = [
            f"conf={self.drive.ceph_conf}",
            f"id={self.drive.user}",
            f"pool={self.drive.pool}",
            f"image={self.drive.image}",
        ]
        if self.drive.snapshot:
            params.append(f"snap={self.drive.snapshot}")
        if self.drive.keyring:
            params.append(f"keyring={self.drive.keyring}")
        with open(log, "wb") as out:
            self._server = subprocess.Popen(
                [
                    NBDKIT,
                    "--foreground",
                    "--exit-with-parent",
                    "--readonly",
                    "--unix",
                    socket,
                    "python",
                    PLUGIN,
                    *params,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + NBDKIT_START_TIMEOUT
        while not os.path.exists(socket):
            if self._server.poll() is not None or time.monotonic() > deadline:
                with open(log, "rb") as f:
                    said = f.read().decode(errors="replace").strip()
                who = f"client.{self.drive.user}"
                raise BackupFsError(
                    f"cannot read {self.drive.spec} as {who}: "
                    f"{said or 'nbdkit did not start'}"
                )
            time.sleep(0.05)
        return socket

    # -- opening ------------------------------------------------------------

    def open(self, filesystem: str | None = None) -> Opened:
        """Start the appliance, find the filesystems, mount one read-only.

        Raise BackupFsError when the disk cannot be read and LayoutError
        (from filelayout) when there is nothing to open.
        """
        clock = self._clock or time.monotonic
        started = clock()
        socket = self._serve()
        try:
            self.g.add_drive_opts(
                "",
                format="raw",
                readonly=True,
                protocol="nbd",
                server=[f"unix:{socket}"],
            )
            self.g.launch()
        except RuntimeError as exc:
            raise BackupFsError(
                f"cannot open {self.drive.spec}: {exc}"
            ) from exc
        launched = clock() - started
        found = self.filesystems()
        chosen = filelayout.pick_filesystem(found, filesystem)
        needs_recovery, options = self._mount(chosen)
        self.opened = Opened(found, chosen, needs_recovery, options, launched)
        return self.opened

    def filesystems(self) -> list[Found]:
        """Every filesystem on the disk: whole disk, partitions, LVs."""
        found = []
        for device, fstype in sorted(self.g.list_filesystems().items()):
            try:
                size = self.g.blockdev_getsize64(device)
            except RuntimeError:
                size = 0
            label = ""
            if fstype not in ("unknown", "swap"):
                with contextlib.suppress(RuntimeError):
                    label = self.g.vfs_label(device)
            found.append(Found(device, fstype, size, label))
        return found

    def _mount(self, chosen: Found) -> tuple[bool, str]:
        """Mount read-only at /; say whether recovery was needed."""
        device, fstype = chosen.device, chosen.fstype
        # Belt and braces: the kernel refuses any write to it now.
        self.g.blockdev_setro(device)
        if fstype in filelayout.EXT:
            features = self.g.tune2fs_l(device).get("Filesystem features", "")
            needs = "needs_recovery" in features.split()
            options = filelayout.mount_options(fstype, needs)
            self.g.mount_options(options, device, "/")
            return needs, options
        try:
            self.g.mount_options("ro", device, "/")
            return False, "ro"
        except RuntimeError as first:
            # On a read-only device the kernel refuses to mount a
            # filesystem whose log needs replaying; without replay it can.
            try:
                options = filelayout.mount_options(fstype, True)
            except filelayout.LayoutError:
                raise BackupFsError(
                    f"cannot mount {device} ({fstype}): {first}"
                ) from first
            try:
                self.g.mount_options(options, device, "/")
            except RuntimeError as exc:
                raise BackupFsError(
                    f"cannot mount {device} ({fstype}): {first}; "
                    f"with {options}: {exc}"
                ) from exc
            return True, options

    # -- reading ------------------------------------------------------------

    def lstat(self, path: str) -> Stat:
        """Raise FileNotFoundError when the path is not in the backup."""
        try:
            return _stat(self.g.lstatns(path))
        except RuntimeError as exc:
            raise FileNotFoundError(f"{path}: {exc}") from exc

    def readlink(self, path: str) -> str:
        return str(self.g.readlink(path))

    def _names0(
        self, call: Callable[[str, str], None], path: str
    ) -> list[str]:
        """Names from an ``*0`` call (NUL-separated, raw bytes), decoded
        so that names that are not UTF-8 survive as surrogate escapes."""
        out = os.path.join(self._scratch.name, "names0")
        try:
            call(path, out)
        except RuntimeError as exc:
            raise FileNotFoundError(f"{path}: {exc}") from exc
        with open(out, "rb") as f:
            raw = f.read()
        os.unlink(out)
        return [
            n.decode("utf-8", "surrogateescape") for n in raw.split(b"\0") if n
        ]

    def listdir(self, path: str) -> list[Entry]:
        """The entries of a directory, with their lstat and symlink
        targets, sorted by name."""
        names = sorted(self._names0(self.g.ls0, path))
        return self._entries(path, names)

    def find(self, path: str) -> list[str]:
        """Every path under ``path``, relative to it, parents first."""
        # find0 keeps a leading "/" below a directory other than the root.
        return [n.lstrip("/") for n in self._names0(self.g.find0, path)]

    def entries_of(self, paths: list[str]) -> list[Entry]:
        """lstat of absolute paths, grouped by directory."""
        by_dir: dict[str, list[str]] = {}
        for p in paths:
            head, _, tail = p.rpartition("/")
            by_dir.setdefault(head or "/", []).append(tail)
        result: dict[str, Entry] = {}
        for directory, names in by_dir.items():
            for entry in self._entries(directory, names):
                full = directory.rstrip("/") + "/" + entry.name
                result[full] = dataclasses.replace(entry, name=full)
        return [result[p] for p in paths if p in result]

    def _entries(self, directory: str, names: list[str]) -> list[Entry]:
        # The binding takes UTF-8 paths only: other names get no details.
        passable = [n for n in names if _utf8(n)] if _utf8(directory) else []
        stats: dict[str, Stat] = {}
        for i in range(0, len(passable), STAT_BATCH):
            batch = passable[i : i + STAT_BATCH]
            for name, st in zip(
                batch, self.g.lstatnslist(directory, batch), strict=True
            ):
                stats[name] = _stat(st)
        links = [n for n in passable if _islink(stats[n])]
        targets: dict[str, str] = {}
        for i in range(0, len(links), STAT_BATCH):
            batch = links[i : i + STAT_BATCH]
            targets.update(
                zip(batch, self.g.readlinklist(directory, batch), strict=True)
            )
        return [Entry(n, stats.get(n), targets.get(n, "")) for n in names]

    def tar_out(
        self, path: str
    ) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A readable stream of an uncompressed tar of directory ``path``
        (members relative to it, numeric owners)."""
        return self._reading(
            lambda target: self.g.tar_out(path, target, numericowner=True)
        )

    def download(
        self, path: str
    ) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A readable stream of the content of regular file ``path``."""
        return self._reading(lambda target: self.g.download(path, target))

    @contextlib.contextmanager
    def _reading(self, call: Callable[[str], None]) -> Iterator[IO[bytes]]:
        """Run ``call`` writing into a pipe in a thread (libguestfs
        releases the GIL while it works) and yield the pipe's read end.

        Raise BackupFsError when the call failed.
        """
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                call(f"/dev/fd/{write_fd}")
            except BaseException as exc:  # noqa: BLE001 - raised below
                failure.append(exc)
            finally:
                os.close(write_fd)

        worker = threading.Thread(target=produce, name="guestfs-stream")
        worker.start()
        source = os.fdopen(read_fd, "rb")
        try:
            yield source
            # What the reader left (a tar's end padding) is not an error.
            while source.read(1 << 20):
                pass
        finally:
            # Closing first makes a producer still writing fail (EPIPE)
            # instead of blocking forever on a reader that gave up.
            source.close()
            worker.join()
        if failure:
            raise BackupFsError(str(failure[0])) from failure[0]


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _islink(st: Stat) -> bool:
    import stat

    return stat.S_ISLNK(st.mode)


@contextlib.contextmanager
def opened(
    drive: RbdDrive, settings: dict[str, Any], filesystem: str | None = None
) -> Iterator[BackupFs]:
    """A BackupFs with its filesystem mounted, closed afterwards."""
    fs = BackupFs(drive, **settings)
    try:
        fs.open(filesystem)
        yield fs
    finally:
        fs.close()
