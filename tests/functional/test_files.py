"""`cinderbak files` against the real stack: read real Cinder backups where
they lie on the backup cluster, without restoring them.

Disk images are made with libguestfs (the real parted, LVM, mkfs.ext4 and
mkfs.xfs in its appliance), written into a Cinder volume of tenant-a, and
backed up by ``cinderbak run-once`` (Cinder's Ceph driver: RBD snapshots
on cluster B). Each ``cinderbak files`` call boots one libguestfs
appliance (about 15-25 s without KVM), so the tests make few calls and
check much with each.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import threading
import uuid
from pathlib import Path

import libvirt
import pytest

from tests import diskimages as di
from tests.functional.test_verify import _backed_up, _policy

MIB = 1024 * 1024
GUESTFS_ENV = {
    "LIBGUESTFS_BACKEND": "direct",
    "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg",
}


@pytest.fixture(autouse=True)
def _guestfs_env(monkeypatch):
    for key, value in GUESTFS_ENV.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


def _files_config(stack, tmp_path, name: str, backup_cluster: bool) -> str:
    b = stack.ceph("b")
    ro = stack.backup_readonly_user
    text = (
        _policy(stack, tmp_path, name, "volume")
        + """
        [files]
        libguestfs_backend_settings = force_tcg
        """
    )
    if backup_cluster:
        text += f"""
        [backup_cluster]
        conf = {b.conf}
        user = {ro.user}
        keyring = {ro.keyring}
        pools = {b.pool}
        """
    return text


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """{relative path: md5} of the regular files under root."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                found[str(p.relative_to(root))] = _md5(p.read_bytes())
    return found


def _run_raw(cinderbak, *args: str) -> subprocess.CompletedProcess:
    """The CLI without -f json (for a tar stream on stdout)."""
    from tests.functional.conftest import CINDERBAK

    return subprocess.run(
        [str(CINDERBAK), "--config-file", str(cinderbak.path), *args],
        env=cinderbak.env | GUESTFS_ENV,
        capture_output=True,
        timeout=900,
    )


def _key_of(keyring: str) -> str:
    for line in Path(keyring).read_text().splitlines():
        k, _, v = line.partition("=")
        if k.strip() == "key":
            return v.strip()
    raise LookupError(keyring)


def _cmdlines_with(needle: str) -> list[str]:
    hits = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path("/proc", pid, "cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in raw:
            hits.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return hits


FULL = {
    "/data/report.txt": di.File(
        b"quarterly numbers\n" * 1000, 0o640, 1_600_000_000
    ),
    "/data/big.bin": di.File(os.urandom(3 * MIB + 123), 0o600, 1_650_000_000),
    "/data/keep/notes.md": di.File(b"# notes\n", 0o644, 1_700_000_000),
    "/data/run-me": di.File(b"#!/bin/sh\necho hi\n", 0o4755, 1_700_000_100),
    "/data/\x1b[31mred\nname": di.File(b"control chars\n", 0o644),
    "/etc/passwd": di.File(b"root:x:0:0:backup's own:/root:/bin/sh\n"),
    os.fsdecode(b"/data/caf\xe9.txt"): di.File(b"latin-1 name\n"),
}
CHANGED = {
    "/data/report.txt": di.File(
        b"revised numbers\n" * 1500, 0o640, 1_760_000_000
    ),
    "/data/new.txt": di.File(b"added after the full backup\n", 0o644),
}
SENTINEL = f"cinderbak-escape-{uuid.uuid4().hex[:8]}"


def test_ext4_in_gpt_partition_full_then_incremental_and_hostile_names(
    stack, alice, admin, make_volume, cinderbak_config, tmp_path
):
    name = f"fl-{uuid.uuid4().hex[:8]}"
    cinderbak = cinderbak_config(_files_config(stack, tmp_path, name, True))
    volume = make_volume(alice, metadata={"cinderbak:policy": name})
    # Hostile content: a symlink out of any target directory, one that
    # climbs, a FIFO, a set-user-ID file, a name with an escape sequence.
    source = tmp_path / "source"
    di.populate(
        source, FULL | {f"/etc/{SENTINEL}.txt": di.File(b"must stay inside\n")}
    )
    os.symlink("/etc", source / "evil")
    os.symlink("../../../../..", source / "data" / "up")
    os.mkfifo(source / "data" / "pipe")
    image = tmp_path / "disk.img"
    di.build_ext4_gpt_from_dir(image, 1024 * MIB, source)
    di.write_to_volume(stack, volume.id, image)
    full = _backed_up(cinderbak, name, volume.id)
    before = tmp_path / "disk.full.img"
    subprocess.run(["cp", "--sparse=always", image, before], check=True)
    di.change_ext4_in_place(
        image,
        CHANGED,
        remove=("/data/keep/notes.md",),
        remove_dirs=("/data/keep",),
        work=tmp_path,
    )
    di.write_to_volume(stack, volume.id, image, previous=before)
    incr = _backed_up(cinderbak, name, volume.id)
    assert incr["kind"] == "incremental", incr

    # Another project's backup is refused before anything is opened.
    cinderbak.run("files", "ls", full["backup_id"], "--project", "tenant-b")
    assert cinderbak.last_returncode == 1
    assert "belongs to project" in cinderbak.last_stderr
    assert "read from" not in cinderbak.last_stderr

    # ls on the full backup, read on cluster B.
    rows = cinderbak.run("files", "ls", full["backup_id"], "/data")
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    said = cinderbak.last_stderr
    first = said.index(f"backup {full['backup_id']}")
    assert f"volume {volume.id}" in said
    assert f"in project {stack.projects['tenant-a']} (tenant-a)" in said
    assert first < said.index("read from ceph backups/")
    assert "read-only as client.cinderbak-backup-ro" in said
    assert "/dev/sda1 (ext4), mounted ro" in said
    assert "NEEDS RECOVERY" not in said
    by_name = {r["name"]: r for r in rows}
    assert by_name["report.txt"]["size"] == len(
        FULL["/data/report.txt"].content
    )
    assert by_name["report.txt"]["mode"] == "-rw-r-----"
    assert by_name["report.txt"]["mtime"] == "2020-09-13T12:26:40Z"
    assert by_name["run-me"]["mode"] == "-rwsr-xr-x"
    assert by_name["pipe"]["type"] == "fifo"
    assert by_name["up"]["target"] == "../../../../.."
    assert by_name["keep"]["type"] == "dir"
    # The name with an escape sequence and a newline, escaped.
    assert "\\x1b[31mred\\x0aname" in by_name
    assert not any("\x1b" in n or "\n" in n for n in by_name)
    # A name that is not UTF-8: listed, escaped, without details.
    assert by_name["caf\\xe9.txt"]["type"] == "unknown"

    # get of the full backup as a tar stream, through a scratch restore
    # (a config without [backup_cluster]): same content as on cluster B.
    fallback = cinderbak_config(_files_config(stack, tmp_path, name, False))
    proc = _run_raw(
        fallback, "files", "get", full["backup_id"], "/data", "--to", "-"
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr
    assert "no [backup_cluster] configured: restoring it" in stderr
    assert "read from scratch volume" in stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        streamed = {
            "/" + n: _md5(tar.extractfile(m).read())
            for n, m in members.items()
            if m.isreg()
        }
    assert all(
        not n.startswith("/") and ".." not in n.split("/") for n in members
    )
    want = {p: f.md5 for p, f in FULL.items() if p.startswith("/data/")}
    assert streamed == want
    assert "data/pipe" not in members  # special files are not sent
    assert members["data/run-me"].mode == 0o755  # no set-user-ID
    assert members["data/up"].issym()
    assert not [
        v
        for v in admin.block_storage.volumes(all_projects=True)
        if v.name == f"cinderbak-verify-{full['backup_id']}"
    ], "scratch volume left behind"

    # get of the incremental backup into a directory: the changed content,
    # and nothing written outside it, whatever the image tries.
    to = tmp_path / "fetched"
    to.mkdir()
    rows = cinderbak.run(
        "files",
        "get",
        incr["backup_id"],
        "/",
        f"/evil/{SENTINEL}.txt",
        "--to",
        str(to),
    )
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    now = FULL | CHANGED
    del now["/data/keep/notes.md"]
    now[f"/etc/{SENTINEL}.txt"] = di.File(b"must stay inside\n")
    got = {
        k: v for k, v in _tree(to).items() if not k.startswith("lost+found")
    }
    assert got == {p.lstrip("/"): f.md5 for p, f in now.items()}
    report = to / "data" / "report.txt"
    assert report.stat().st_mtime == 1_760_000_000
    assert oct(report.stat().st_mode & 0o7777) == oct(0o640)
    assert oct((to / "data" / "run-me").stat().st_mode & 0o7777) == oct(0o755)
    assert os.readlink(to / "evil") == "/etc"
    assert os.readlink(to / "data" / "up") == "../../../../.."
    assert not (to / "data" / "pipe").exists()
    assert not Path("/etc", f"{SENTINEL}.txt").exists()
    results = {r["path"]: r["result"] for r in rows}
    assert results["data/pipe"] == "skipped: special file, not created"
    assert results[f"evil/{SENTINEL}.txt"].startswith(
        "skipped: evil is a symlink"
    )


def test_lvm_xfs_same_vg_name_in_two_backups_opened_at_once_one_dirty(
    stack, alice, make_volume, cinderbak_config, tmp_path
):
    name = f"fl-{uuid.uuid4().hex[:8]}"
    cinderbak = cinderbak_config(_files_config(stack, tmp_path, name, True))
    made = []
    for n in range(2):
        volume = make_volume(alice, metadata={"cinderbak:policy": name})
        content = {
            f"/srv/volume{n}.txt": di.File(f"volume {n}\n".encode(), 0o600),
            "/srv/shared/blob": di.File(os.urandom(MIB + n), 0o644),
        }
        made.append((content, volume.id))
    images = [(tmp_path / f"lvm{n}.img", c) for n, (c, _v) in enumerate(made)]
    di.build_lvm_xfs(images, 1024 * MIB, vg="vgdata", dirty_last=True)
    for (image, _c), (_c2, volume_id) in zip(images, made, strict=True):
        di.write_to_volume(stack, volume_id, image)
        image.unlink()
    rows = cinderbak.run(
        "run-once", "--policy", name, "--no-audit", check=True
    )
    by_volume = {r["volume_id"]: r for r in rows}
    assert all(by_volume[v]["status"] == "ok" for _c, v in made), rows
    backups = [by_volume[v]["backup_id"] for _c, v in made]

    # Both open at once: each in its own appliance, whose kernel alone sees
    # its VG "vgdata". Meanwhile, no command line holds the Ceph key.
    key = _key_of(stack.backup_readonly_user.keyring)
    results: dict[int, list] = {}
    leaks: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            leaks.extend(_cmdlines_with(key))

    def get(n: int) -> None:
        to = tmp_path / f"lvm{n}"
        to.mkdir()
        proc = _run_raw(
            cinderbak, "files", "get", backups[n], "/srv", "--to", str(to)
        )
        results[n] = [proc.returncode, proc.stderr.decode(errors="replace")]

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=get, args=(n,)) for n in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watcher.join()
    assert not leaks
    for n, (content, _volume) in enumerate(made):
        code, said = results[n]
        assert code == 0, said
        assert _tree(tmp_path / f"lvm{n}") == {
            p.lstrip("/"): f.md5 for p, f in content.items()
        }
    # The second XFS was left with a log to replay: read without it.
    assert "/dev/vgdata/data (xfs), mounted ro\n" in results[0][1]
    assert "NEEDS RECOVERY" not in results[0][1]
    assert "/dev/vgdata/data (xfs), mounted ro,norecovery" in results[1][1]
    assert "NEEDS RECOVERY: the xfs filesystem needs recovery" in results[1][1]

    # And one after the other: find in the second.
    rows = cinderbak.run("files", "find", backups[1], "volume*")
    assert cinderbak.last_returncode == 0, cinderbak.last_stderr
    assert [(r["name"], r["size"], r["mode"]) for r in rows] == [
        ("/srv/volume1.txt", 9, "-rw-------")
    ]


needs_guest = pytest.mark.skipif(
    os.environ.get("CINDERBAK_SKIP_TINYGUEST") == "1",
    reason="CINDERBAK_SKIP_TINYGUEST=1",
)


@needs_guest
def test_crash_consistent_backup_of_a_writing_guest_is_read_without_replay(
    stack, alice, make_volume, cinderbak_config, tmp_path
):
    """ext4 (with journal) on the whole disk of a real guest that appends
    and fsyncs records while a crash-consistent backup is taken: listed
    without replaying the journal and said to need recovery; the backup's
    snapshot on cluster B is the same before and after."""
    from tests import localstack
    from tests import tinyguest as tg

    name = f"fl-{uuid.uuid4().hex[:8]}"
    cinderbak = cinderbak_config(_files_config(stack, tmp_path, name, True))
    a = stack.ceph("a")
    cinder = a.users["cinder"]
    volume = make_volume(alice, metadata={"cinderbak:policy": name})
    disk = tg.RbdDisk(
        a.pool,
        f"volume-{volume.id}",
        Path(a.conf),
        cinder.user,
        Path(cinder.keyring),
    )
    guests = tg.TinyGuest()
    guests.ensure_up()
    domain = f"fl-{uuid.uuid4().hex[:8]}"
    server = str(uuid.uuid4())
    guests.start(domain, server, rbd=disk, format=True)
    try:
        conn = libvirt.open(guests.uri)
        try:
            tg.wait_guest_records(conn, server, 30)
        finally:
            conn.close()
        made = _backed_up(cinderbak, name, volume.id)  # noop: crash-consistent
        assert made["consistency"] == "crash", made
    finally:
        guests.destroy(domain)
    image, snap = localstack.backup_snapshot(stack, made["backup_id"])
    before = localstack.read_volume_md5(stack, f"backups/{image}@{snap}")

    rows = cinderbak.run("files", "ls", made["backup_id"], "/")
    said = cinderbak.last_stderr
    assert cinderbak.last_returncode == 0, said
    assert "/dev/sda (ext4), mounted ro,noload" in said
    assert "NEEDS RECOVERY: the ext4 filesystem needs recovery" in said
    # Without replay, what only the journal holds is not seen: writer.log
    # (created after mkfs) may not be there yet; the filesystem is.
    names = {r["name"]: r for r in rows}
    assert names["lost+found"]["type"] == "dir"
    assert set(names) <= {"lost+found", "writer.log"}
    assert before == localstack.read_volume_md5(
        stack, f"backups/{image}@{snap}"
    )
