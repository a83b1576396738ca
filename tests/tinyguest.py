"""Drive ``tools/tinyguest`` from tests: real TCG guests under a private
libvirtd, and what the guest wrote, read from its data disk image.

The guest's writer appends a record ``SEQ UPTIME EPOCH CRC`` to
``/writer.log`` on its ext4 data disk about every 100 ms and fsyncs it;
CRC (8 hex digits of the MD5 of the rest) tells an intact record from a
torn or stale one. A file data disk has no journal, so ``debugfs`` reads
the file from the image at any time, without mounting it; a freeze shows
as a gap in UPTIME (the guest's monotonic clock).

An RBD data disk (a Cinder volume) holds ext4 *with* a journal, as a real
guest's would: an image exported while the guest runs is crash-consistent
(``needs_recovery`` set, the newest records only in the journal), one
exported while the guest is frozen is clean. The helpers at the end read
such raw images without mounting or modifying them, and recover a copy.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu
import tenacity

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "tinyguest"


class TinyGuestError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class RbdDisk:
    """An RBD image as a guest's data disk, and the ceph client for it."""

    pool: str
    image: str
    conf: Path
    user: str
    keyring: Path

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.image}"


@dataclasses.dataclass(frozen=True)
class Guest:
    name: str
    uuid: str
    disk: Path | None  # the image file; None for an RBD disk
    console: Path
    rbd: RbdDisk | None = None
    boot_ms: int | None = None  # virsh create to "GUEST: READY"
    format_ms: int | None = None  # --format: mkfs + copy to the image


@dataclasses.dataclass(frozen=True)
class WriterLine:
    seq: int
    uptime: float  # guest seconds since boot, 10 ms resolution
    epoch: int  # guest wall clock, whole seconds


@dataclasses.dataclass(frozen=True)
class RecordsReport:
    """What a copy of ``/writer.log`` holds, judged record by record."""

    records: tuple[WriterLine, ...]  # the lines that verify, in order
    total: int  # lines, a torn last one (no newline) included
    first_bad: int | None  # line number (= expected seq) of the first
    # line that does not verify
    contiguous: bool  # verified seqs are 0, 1, 2, ... without a hole
    torn_tail: bool  # the last line is the only one that does not verify

    @property
    def verified(self) -> int:
        return len(self.records)

    @property
    def intact(self) -> bool:
        """Every line verifies, seqs 0..n-1: nothing lost or torn."""
        return self.first_bad is None and self.contiguous


@dataclasses.dataclass(frozen=True)
class Fsck:
    rc: int  # e2fsck's exit code: 0 clean, 1 fixed, 4 left errors, 8+ failed
    summary: str  # its findings, without the banner and "Pass N" lines


@dataclasses.dataclass(frozen=True)
class FsState:
    needs_recovery: bool  # the journal holds transactions to replay
    fsck: Fsck  # e2fsck -fn: read-only, journal not replayed

    @property
    def clean(self) -> bool:
        return not self.needs_recovery and self.fsck.rc == 0


class TinyGuest:
    """One state directory of tools/tinyguest (default ``<repo>/.tinyguest``,
    or ``$TINYGUEST_STATE``, or ``$TINYGUEST_DIR``)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.env = dict(os.environ)
        if state_dir is not None:
            self.env["TINYGUEST_STATE"] = str(state_dir)

    def run(self, *args: str, timeout: float = 600) -> str:
        return _checked(
            "tinyguest", [str(TOOL)], args, timeout=timeout, env=self.env
        )

    def state(self) -> dict:
        return json.loads(self.run("status"))

    @property
    def uri(self) -> str:
        return self.state()["uri"]

    def libvirtd_pid(self) -> int:
        state_dir = Path(self.state()["state_dir"])
        return int((state_dir / "run" / "libvirtd.pid").read_text())

    def ensure_up(self) -> str:
        """Build if needed, start the daemons; return the libvirt URI."""
        self.run("build")
        self.run("up")
        return self.uri

    def start(
        self,
        name: str,
        uuid: str,
        *,
        agent: bool = True,
        channel: bool = True,
        hook_sleep: int = 0,
        rbd: RbdDisk | None = None,
        format: bool = False,
    ) -> Guest:
        """Boot a transient domain and wait until it (and its agent) is
        ready. With ``rbd`` its data disk is that image (``format``: a
        fresh ext4 with journal first), else a fresh journal-less file."""
        args = ["up", "--name", name, "--uuid", uuid]
        if not channel:
            args.append("--no-channel")
        elif not agent:
            args.append("--no-agent")
        if hook_sleep:
            args += ["--hook-sleep", str(hook_sleep)]
        if rbd is not None:
            args += [
                "--rbd",
                rbd.spec,
                "--ceph-conf",
                str(rbd.conf),
                "--ceph-user",
                rbd.user,
                "--ceph-keyring",
                str(rbd.keyring),
            ]
            if format:
                args.append("--format")
        elif format:
            raise ValueError("format=True needs an rbd disk")
        self.run(*args)
        info = self.state()["domains"][name]
        guest = Guest(
            name,
            uuid,
            Path(info["disk"]) if info.get("disk") else None,
            Path(info["console"]),
            rbd,
            info.get("boot_ms"),
            info.get("format_ms"),
        )
        if agent and channel:
            conn = libvirt.open(self.uri)
            try:
                wait_agent(conn, uuid)
            finally:
                conn.close()
        return guest

    def destroy(self, name: str) -> None:
        self.run("destroy", name)

    def restart_libvirtd(self) -> None:
        self.run("restart-libvirtd")

    def down(self) -> None:
        self.run("down")


def agent_command(
    conn: libvirt.virConnect,
    uuid: str,
    command: str,
    timeout: int = 10,
    *,
    arguments: dict | None = None,
) -> object:
    """Run one guest agent command; return its "return" value."""
    dom = conn.lookupByUUIDString(uuid)
    request: dict = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), timeout, 0)
    return json.loads(reply)["return"]


def fsfreeze_status(conn: libvirt.virConnect, uuid: str) -> str:
    """Return "frozen" or "thawed", as the guest agent sees it."""
    return str(agent_command(conn, uuid, "guest-fsfreeze-status"))


def wait_agent(
    conn: libvirt.virConnect, uuid: str, timeout: float = 30
) -> None:
    """Wait until the guest agent answers a ping."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_fixed(0.2),
        retry=tenacity.retry_if_exception_type(libvirt.libvirtError),
        reraise=True,
    )
    retrying(agent_command, conn, uuid, "guest-ping", 2)


def read_writer_log(disk: Path) -> list[WriterLine]:
    """The writer's records that verify, read from a journal-less data
    disk image while the guest may be writing (the last line may be cut
    short)."""
    return list(read_records(disk).records)


def largest_gap(lines: list[WriterLine]) -> tuple[float, WriterLine]:
    """Return the largest uptime gap between consecutive lines, and the
    line after it."""
    gap, after = max(
        (b.uptime - a.uptime, b)
        for a, b in zip(lines, lines[1:], strict=False)
    )
    return gap, after


# --- records -------------------------------------------------------------

WRITER_LOG = "/writer.log"  # in the data disk's root
GUEST_WRITER_LOG = "/mnt/data/writer.log"  # where the guest mounts it


def record_crc(body: str) -> str:
    """The CRC field the guest's writer appends to "SEQ UPTIME EPOCH"."""
    digest = hashlib.md5(body.encode(), usedforsecurity=False)
    return digest.hexdigest()[:8]


def parse_record(line: str) -> WriterLine | None:
    """One line's record, or None if it is torn, stale or garbage."""
    fields = line.split(" ")
    if len(fields) != 4 or record_crc(" ".join(fields[:3])) != fields[3]:
        return None
    try:
        return WriterLine(int(fields[0]), float(fields[1]), int(fields[2]))
    except ValueError:
        return None


def parse_records(data: bytes) -> RecordsReport:
    """Judge the content of a writer.log: which records verify, where the
    first bad one is, and whether only the last line is torn."""
    lines = data.decode("latin-1").split("\n")
    if lines[-1] == "":
        lines.pop()  # after the final newline
    parsed = [parse_record(line) for line in lines]
    records = tuple(r for r in parsed if r is not None)
    bad = [i for i, r in enumerate(parsed) if r is None]
    return RecordsReport(
        records=records,
        total=len(lines),
        first_bad=bad[0] if bad else None,
        contiguous=[r.seq for r in records] == list(range(len(records))),
        torn_tail=bad == [len(lines) - 1],
    )


def read_records(image_file: Path) -> RecordsReport:
    """Judge /writer.log as it is in a raw ext4 image file: read with
    debugfs, so nothing is mounted and no journal is replayed (records
    still only in the journal are not seen)."""
    proc = subprocess.run(
        ["debugfs", "-R", f"cat {WRITER_LOG}", str(image_file)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    # debugfs reports a missing file on stderr and still exits 0.
    if b"not found" in proc.stderr:
        raise FileNotFoundError(
            f"{WRITER_LOG} not in {image_file}: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return parse_records(proc.stdout)


def read_guest_file(
    conn: libvirt.virConnect, uuid: str, path: str, chunk: int = 1 << 20
) -> bytes:
    """A file as the running guest sees it (page cache included), through
    its agent; it fails while the guest is frozen."""
    handle = agent_command(
        conn, uuid, "guest-file-open", arguments={"path": path, "mode": "r"}
    )
    data = b""
    try:
        while True:
            reply = agent_command(
                conn,
                uuid,
                "guest-file-read",
                arguments={"handle": handle, "count": chunk},
            )
            assert isinstance(reply, dict)
            data += base64.b64decode(reply["buf-b64"])
            if reply["eof"] or not reply["count"]:
                return data
    finally:
        agent_command(
            conn, uuid, "guest-file-close", arguments={"handle": handle}
        )


def guest_records(conn: libvirt.virConnect, uuid: str) -> RecordsReport:
    """The writer's records as the running guest sees them."""
    return parse_records(read_guest_file(conn, uuid, GUEST_WRITER_LOG))


def wait_guest_records(
    conn: libvirt.virConnect, uuid: str, count: int, timeout: float = 60
) -> RecordsReport:
    """Wait until the guest has written at least ``count`` records."""
    deadline = time.monotonic() + timeout
    while True:
        report = guest_records(conn, uuid)
        if report.verified >= count:
            return report
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"guest {uuid}: {report.verified} records after {timeout}s"
            )
        time.sleep(0.5)


# --- raw ext4 images -----------------------------------------------------


def features(dumpe2fs_header: str) -> set[str]:
    """The "Filesystem features" of ``dumpe2fs -h`` output."""
    for line in dumpe2fs_header.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Filesystem features":
            return set(value.split())
    raise ValueError("no 'Filesystem features' in dumpe2fs output")


def fsck_summary(output: str) -> str:
    """e2fsck's output without its banner and progress lines."""
    kept = [
        line.strip()
        for line in output.splitlines()
        if line.strip()
        and not line.startswith(("e2fsck ", "Pass "))
        and line.strip() != "Fix? yes"
    ]
    return "\n".join(kept)


def _e2fsck(options: str, image_file: Path) -> Fsck:
    proc = subprocess.run(
        ["e2fsck", options, str(image_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Fsck(proc.returncode, fsck_summary(proc.stdout + proc.stderr))


def filesystem_state(image_file: Path) -> FsState:
    """needs_recovery and a read-only ``e2fsck -fn`` of an ext4 image file;
    the file is opened read-only by both tools, so it stays as it is."""
    header = subprocess.run(
        ["dumpe2fs", "-h", str(image_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return FsState(
        "needs_recovery" in features(header), _e2fsck("-fn", image_file)
    )


def recover_copy(image_file: Path, dest: Path) -> Fsck:
    """Copy an image (sparse) and repair the copy with ``e2fsck -fy``,
    which replays the journal: what a crash-consistent image holds once
    mounted. rc 1 is normal after a replay (free counts fixed)."""
    subprocess.run(
        ["cp", "--sparse=always", str(image_file), str(dest)],
        check=True,
        timeout=300,
    )
    return _e2fsck("-fy", dest)


def rbd(
    conf: Path, user: str, keyring: Path, *args: str, timeout: float = 600
) -> str:
    """Run the rbd CLI as a ceph client; return its stdout."""
    if shutil.which("rbd") is None:
        raise TinyGuestError("no rbd command (ceph-common)")
    cmd = ["rbd", "-c", str(conf), "--id", user, "--keyring", str(keyring)]
    return _checked("rbd", cmd, args, timeout=timeout)


def _checked(
    what: str,
    cmd: list[str],
    args: tuple[str, ...],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``cmd + args``; return stdout, or raise TinyGuestError with
    what failed and its stderr."""
    proc = subprocess.run(
        [*cmd, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise TinyGuestError(
            f"{what} {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stderr.strip()}"
        )
    return proc.stdout


def export_rbd(
    conf: Path, user: str, keyring: Path, pool: str, image: str, dest: Path
) -> Path:
    """``rbd export`` an image (or ``IMAGE@SNAP``) to a raw sparse file."""
    rbd(
        conf,
        user,
        keyring,
        "export",
        "--no-progress",
        f"{pool}/{image}",
        str(dest),
    )
    return dest


@contextlib.contextmanager
def rbd_snapshot(disk: RbdDisk, snap: str) -> Iterator[str]:
    """A point-in-time RBD snapshot of a disk in use, removed afterwards:
    exporting a running image directly reads its objects one after the
    other while the guest writes, which no crash ever leaves on a disk.
    Yields ``IMAGE@SNAP`` for export_rbd."""
    spec = f"{disk.spec}@{snap}"
    rbd(disk.conf, disk.user, disk.keyring, "snap", "create", spec)
    try:
        yield f"{disk.image}@{snap}"
    finally:
        rbd(
            disk.conf,
            disk.user,
            disk.keyring,
            "snap",
            "rm",
            "--no-progress",
            spec,
        )
