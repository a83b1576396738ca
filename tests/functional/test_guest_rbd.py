"""tools/tinyguest with a Cinder volume (an RBD image) as the guest's data
disk: the harness for proving that a quiesced backup restores to a clean
filesystem with every record intact, while a crash-consistent one needs
its journal replayed.

The first tests check the record and image helpers on images made here
with mkfs and debugfs (no guest). The last boots a guest on a fresh 1 GiB
volume of alice's and compares a frozen export, a live (snapshot) export
and what the guest itself reads through its agent.

Set CINDERBAK_SKIP_TINYGUEST=1 to skip the guest test, as in
test_quiesce_guest.py.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import libvirt
import pytest

from tests import tinyguest as tg

needs_guest = pytest.mark.skipif(
    os.environ.get("CINDERBAK_SKIP_TINYGUEST") == "1",
    reason="CINDERBAK_SKIP_TINYGUEST=1",
)


def record(seq: int, uptime: float, epoch: int) -> bytes:
    body = f"{seq} {uptime:.2f} {epoch}"
    return f"{body} {tg.record_crc(body)}\n".encode()


def writer_log(count: int) -> bytes:
    return b"".join(record(i, 3 + i / 10, 1_700_000_000) for i in range(count))


# --- records, without a guest ---------------------------------------------


def test_record_crc_is_what_md5sum_prints():
    # The guest computes it with busybox md5sum: the host must agree.
    body = "17 4.25 1795502590"
    out = subprocess.run(
        ["md5sum"], input=body.encode(), capture_output=True, check=True
    ).stdout.decode()
    assert tg.record_crc(body) == out[:8]


def test_intact_log():
    report = tg.parse_records(writer_log(5))
    assert report.intact and not report.torn_tail
    assert report.total == report.verified == 5
    assert [r.seq for r in report.records] == [0, 1, 2, 3, 4]
    assert report.records[2] == tg.WriterLine(2, 3.2, 1_700_000_000)


def test_empty_log_is_intact():
    report = tg.parse_records(b"")
    assert report.intact and report.total == 0


@pytest.mark.parametrize(
    "tail",
    [
        record(5, 3.5, 1_700_000_000)[:9],  # cut while written
        b"\0" * 37,  # size grew, data never reached the disk
        # a changed field, the old checksum
        record(5, 3.5, 1_700_000_000).replace(b" 3.50 ", b" 3.51 "),
    ],
)
def test_only_the_last_line_torn(tail):
    report = tg.parse_records(writer_log(5) + tail)
    assert report.torn_tail and report.contiguous
    assert (report.total, report.verified, report.first_bad) == (6, 5, 5)
    assert not report.intact


def test_bad_record_in_the_middle():
    lines = writer_log(6).splitlines(keepends=True)
    lines[2] = lines[2].replace(b" 3.20 ", b" 3.21 ")
    report = tg.parse_records(b"".join(lines))
    assert report.first_bad == 2 and not report.torn_tail
    assert not report.contiguous  # seq 2 is missing from the verified
    assert [r.seq for r in report.records] == [0, 1, 3, 4, 5]


def test_missing_record_breaks_contiguity():
    lines = writer_log(4).splitlines(keepends=True)
    report = tg.parse_records(b"".join(lines[:1] + lines[2:]))
    assert report.first_bad is None and not report.contiguous


# --- raw ext4 images, without a guest -------------------------------------


def make_image(path: Path, *mkfs_options: str) -> Path:
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", *mkfs_options, "-L", "tgdata", str(path)],
        check=True,
    )
    return path


def put_file(image: Path, name: str, data: bytes, tmp_path: Path) -> None:
    """Write a file into the image's root with debugfs: no mount."""
    src = tmp_path / "src"
    src.write_bytes(data)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {src} {name}", str(image)],
        capture_output=True,
        check=True,
    )


def test_read_records_from_an_image(tmp_path):
    image = make_image(tmp_path / "disk.img")
    torn = record(7, 3.7, 1_700_000_000)[:-4]
    put_file(image, "writer.log", writer_log(7) + torn, tmp_path)
    report = tg.read_records(image)
    assert (report.total, report.verified, report.first_bad) == (8, 7, 7)
    assert report.torn_tail and report.contiguous


def test_read_records_without_the_file(tmp_path):
    image = make_image(tmp_path / "disk.img")
    with pytest.raises(FileNotFoundError):
        tg.read_records(image)


def test_fresh_filesystem_is_clean_and_left_untouched(tmp_path):
    image = make_image(tmp_path / "disk.img")
    before = image.read_bytes()
    state = tg.filesystem_state(image)
    assert state.clean and not state.needs_recovery
    assert state.fsck.rc == 0 and "tgdata" in state.fsck.summary
    assert image.read_bytes() == before


def test_damage_is_found_read_only_and_fixed_in_a_copy(tmp_path):
    image = make_image(tmp_path / "disk.img", "-O", "^has_journal")
    put_file(image, "writer.log", writer_log(3), tmp_path)
    # Free the file's inode in the bitmap while the directory still
    # names it: e2fsck must notice.
    subprocess.run(
        ["debugfs", "-w", "-R", "freei writer.log", str(image)],
        capture_output=True,
        check=True,
    )
    before = image.read_bytes()
    state = tg.filesystem_state(image)
    assert state.fsck.rc == 4 and not state.clean, state.fsck.summary
    assert image.read_bytes() == before

    fixed = tg.recover_copy(image, tmp_path / "copy.img")
    assert fixed.rc == 1, fixed.summary
    assert tg.filesystem_state(tmp_path / "copy.img").clean
    assert tg.filesystem_state(image).fsck.rc == 4  # the original stays


def test_features_and_summary_parsing():
    header = (
        "Filesystem volume name:   tgdata\n"
        "Filesystem features:      has_journal ext_attr needs_recovery "
        "extent\n"
        "Journal features:         journal_64bit\n"
    )
    assert tg.features(header) == {
        "has_journal",
        "ext_attr",
        "needs_recovery",
        "extent",
    }
    with pytest.raises(ValueError):
        tg.features("Filesystem volume name: x\n")
    summary = tg.fsck_summary(
        "e2fsck 1.47.0 (5-Feb-2023)\nPass 1: Checking inodes\n"
        "Free blocks count wrong (9, counted=7).\nFix? yes\n\n"
        "tgdata: 12/65536 files\n"
    )
    assert summary == (
        "Free blocks count wrong (9, counted=7).\ntgdata: 12/65536 files"
    )


# --- a guest on a Cinder volume -------------------------------------------


@pytest.fixture(scope="module")
def guests():
    """The private libvirtd, started if needed. It is shared with other
    guest tests, so it is left running."""
    tiny = tg.TinyGuest()
    tiny.ensure_up()
    return tiny


@pytest.fixture
def volume_disk(stack, alice, make_volume) -> tg.RbdDisk:
    """A fresh 1 GiB volume of alice's, as the cinder ceph user sees it.
    It stays "available" in Cinder: the guest opens the image directly."""
    volume = make_volume(alice, size=1, name=f"tg-rbd-{uuid.uuid4().hex[:8]}")
    a = stack.ceph("a")
    cinder = a.users["cinder"]
    return tg.RbdDisk(
        a.pool,
        f"volume-{volume.id}",
        Path(a.conf),
        cinder.user,
        Path(cinder.keyring),
    )


@pytest.fixture
def rbd_guest(guests, volume_disk):
    """A guest booted on the volume, formatted first; destroyed before
    the volume is deleted (this fixture ends before make_volume's)."""
    name = f"tg-rbd-{uuid.uuid4().hex[:8]}"
    guest = guests.start(name, str(uuid.uuid4()), rbd=volume_disk, format=True)
    yield guest
    guests.destroy(name)
    # QEMU closed the image: nothing keeps Cinder from deleting it.
    deadline = time.monotonic() + 30
    while "Watchers: none" not in (status := image_status(volume_disk)):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def image_status(disk: tg.RbdDisk) -> str:
    return tg.rbd(disk.conf, disk.user, disk.keyring, "status", disk.spec)


def export(disk: tg.RbdDisk, image: str, dest: Path) -> float:
    """Export ``image`` of the disk's pool to dest; return the seconds."""
    start = time.monotonic()
    tg.export_rbd(disk.conf, disk.user, disk.keyring, disk.pool, image, dest)
    return time.monotonic() - start


@needs_guest
def test_frozen_export_is_clean_and_live_one_needs_recovery(
    guests, rbd_guest, tmp_path
):
    disk = rbd_guest.rbd
    assert disk is not None and rbd_guest.disk is None
    conn = libvirt.open(guests.uri)
    try:
        dom = conn.lookupByUUIDString(rbd_guest.uuid)
        # The guest sees vda with the volume's id as serial, as in Nova.
        assert f"<serial>{disk.image.removeprefix('volume-')}</serial>" in (
            dom.XMLDesc()
        )
        first = tg.wait_guest_records(conn, rbd_guest.uuid, 20)
        assert first.intact, first

        # Crash-consistent: a point-in-time snapshot of the running disk.
        with tg.rbd_snapshot(disk, f"tg-{uuid.uuid4().hex[:8]}") as snap:
            live_seconds = export(disk, snap, tmp_path / "live.img")
        before = tg.guest_records(conn, rbd_guest.uuid)

        # Quiesced: exported while the guest's filesystems are frozen,
        # held long enough that the freeze is the writer's largest gap.
        assert dom.fsFreeze() == 1
        frozen_at = time.monotonic()
        try:
            assert tg.fsfreeze_status(conn, rbd_guest.uuid) == "frozen"
            frozen_seconds = export(disk, disk.image, tmp_path / "frozen.img")
            time.sleep(max(0.0, 2.0 - (time.monotonic() - frozen_at)))
        finally:
            dom.fsThaw()
        window = time.monotonic() - frozen_at
        assert tg.fsfreeze_status(conn, rbd_guest.uuid) == "thawed"
        frozen = tg.read_records(tmp_path / "frozen.img")
        after = tg.wait_guest_records(
            conn, rbd_guest.uuid, frozen.verified + 5
        )
    finally:
        conn.close()
    assert after.intact, after

    # The frozen image: clean as it is, every record up to the freeze.
    state = tg.filesystem_state(tmp_path / "frozen.img")
    assert state.clean, state
    assert frozen.intact, frozen
    assert frozen.verified >= before.verified
    assert frozen.records == after.records[: frozen.verified]
    gap, resumed = tg.largest_gap(list(after.records))
    assert resumed.seq - frozen.records[-1].seq in (1, 2), (gap, resumed)
    assert gap >= window - 0.35, (gap, window)

    # The live image: a journal to replay; the records are there after.
    live = tg.filesystem_state(tmp_path / "live.img")
    assert live.needs_recovery and not live.clean, live
    fixed = tg.recover_copy(tmp_path / "live.img", tmp_path / "replayed.img")
    assert fixed.rc in (0, 1), fixed.summary
    assert "recovering journal" in fixed.summary
    assert tg.filesystem_state(tmp_path / "replayed.img").clean
    replayed = tg.read_records(tmp_path / "replayed.img")
    assert replayed.intact, replayed
    assert first.verified <= replayed.verified <= before.verified
    assert replayed.records == after.records[: replayed.verified]

    rate = (after.verified - 1) / (
        after.records[-1].uptime - after.records[0].uptime - gap
    )
    gib = 1  # the volume's size
    print(
        f"\ntinyguest rbd: format {rbd_guest.format_ms} ms, boot "
        f"{rbd_guest.boot_ms} ms, {rate:.1f} records/s, export "
        f"{live_seconds / gib:.2f} s/GiB live (snapshot), "
        f"{frozen_seconds / gib:.2f} s/GiB frozen, window {window:.2f} s"
    )
