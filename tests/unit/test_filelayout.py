"""File-level restore decisions without I/O: which filesystem to open, how
to mount it, where a backup lies on the backup cluster, whose backup may
be opened, and the rows shown."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cinderbak import backupfs, filerestore
from cinderbak.backup_cluster import find_backup_image
from cinderbak.filelayout import (
    Found,
    LayoutError,
    entry_row,
    file_type,
    iso_time,
    mount_options,
    pick_filesystem,
    recovery_note,
)
from cinderbak.filerestore import FilesError, Subject, check_subject

GIB = 1024**3
VOL = "6b1f0c3e-0000-4000-8000-000000000001"
B1 = "aaaaaaaa-0000-4000-8000-000000000001"
B2 = "bbbbbbbb-0000-4000-8000-000000000002"


def test_whole_disk_partition_and_lvm_layouts():
    whole = [Found("/dev/sda", "ext4", GIB)]
    assert pick_filesystem(whole).device == "/dev/sda"
    # /boot beside a root LV, plus the PV and swap: the largest supported.
    boot_and_lvm = [
        Found("/dev/sda1", "ext4", 512 * 2**20, "boot"),
        Found("/dev/sda2", "LVM2_member", 9 * GIB),
        Found("/dev/vgdata/root", "xfs", 8 * GIB),
        Found("/dev/vgdata/swap", "swap", GIB),
    ]
    assert pick_filesystem(boot_and_lvm).device == "/dev/vgdata/root"
    assert pick_filesystem(boot_and_lvm, "/dev/sda1").fstype == "ext4"


def test_no_filesystem_or_a_wrong_choice_names_what_was_found():
    found = [Found("/dev/sda", "unknown", GIB), Found("/dev/sdb1", "swap", 1)]
    with pytest.raises(LayoutError, match=r"/dev/sda \(unknown"):
        pick_filesystem(found)
    with pytest.raises(LayoutError, match="no supported filesystem /dev/sdb1"):
        pick_filesystem(found, "/dev/sdb1")
    with pytest.raises(LayoutError, match="found: none"):
        pick_filesystem([])


@given(
    st.lists(
        st.builds(
            Found,
            st.sampled_from([f"/dev/sd{c}{n}" for c in "ab" for n in "123"]),
            st.sampled_from(["ext4", "xfs", "swap", "unknown", "ext2"]),
            st.integers(0, 10 * GIB),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda f: f.device,
    )
)
def test_the_choice_is_supported_largest_and_stable(found):
    try:
        chosen = pick_filesystem(found)
    except LayoutError:
        assert not any(f.supported for f in found)
        return
    assert chosen.supported
    assert all(chosen.size >= f.size for f in found if f.supported)
    assert pick_filesystem(list(reversed(found))) == chosen


def test_mount_options_never_replay():
    assert mount_options("ext4", False) == "ro"
    assert mount_options("ext4", True) == "ro,noload"
    assert mount_options("ext3", True) == "ro,noload"
    assert mount_options("xfs", True) == "ro,norecovery"
    with pytest.raises(LayoutError, match="needs recovery"):
        mount_options("btrfs", True)
    assert recovery_note("ext4", False) == ""
    assert "without replaying its journal" in recovery_note("ext4", True)
    assert "without replaying its log" in recovery_note("xfs", True)


def test_rows():
    mode = stat.S_IFREG | 0o4755
    assert entry_row("a\nb", mode, 5, 0) == (
        "a\\x0ab",
        "file",
        5,
        "-rwsr-xr-x",
        "1970-01-01T00:00:00Z",
        "",
    )
    link = entry_row("up", stat.S_IFLNK | 0o777, 8, 1_600_000_000, "../\x1b")
    assert link[1] == "symlink" and link[5] == "../\\x1b"
    assert file_type(stat.S_IFIFO) == "fifo"
    assert file_type(stat.S_IFCHR) == "char-device"
    assert file_type(0) == "unknown"
    assert iso_time(10**20) == str(10**20)  # a damaged inode's time


def test_finding_a_backup_on_the_backup_cluster():
    images = {
        f"volume-{VOL}.backup.{B1}": [
            f"backup.{B1}.snap.1795488915.95",
            f"backup.{B2}.snap.1795488917.98",
        ],
        f"volume-{VOL}.backup.base": [],
        "volume-other.backup.x": [f"backup.{B2}.snap.1"],
    }
    assert find_backup_image(images, VOL, B2) == (
        f"volume-{VOL}.backup.{B1}",
        f"backup.{B2}.snap.1795488917.98",
    )
    assert find_backup_image(images, VOL, "cccc") is None
    # A full copy of a non-RBD source: an image of its own, no snapshot.
    own = {f"volume-{VOL}.backup.{B1}": []}
    assert find_backup_image(own, VOL, B1) == (
        f"volume-{VOL}.backup.{B1}",
        None,
    )
    # Another volume's chain never matches, even with the backup's id.
    assert find_backup_image(images, "other", B1) is None


def _subject(**kw):
    base = dict(
        backup_id=B1,
        volume_id=VOL,
        project_id="p-a",
        project_name="tenant-a",
        volume_name="db\x1b",
        created_at="2026-12-01T10:00:00",
        status="available",
        incremental=True,
    )
    return Subject(**(base | kw))


def test_a_backup_is_only_opened_for_its_own_project():
    check_subject(_subject(), None)
    check_subject(_subject(), "p-a")
    check_subject(_subject(), "tenant-a")
    with pytest.raises(FilesError, match="belongs to project p-a, not p-b"):
        check_subject(_subject(), "p-b")
    with pytest.raises(FilesError, match="is creating"):
        check_subject(_subject(status="creating"), None)


def test_what_is_said_first_and_after_opening():
    line = filerestore.subject_line(_subject())
    assert line.startswith(f"backup {B1} (incremental, ")
    assert f"volume {VOL} (db\\x1b) in project p-a (tenant-a)" in line
    chosen = Found("/dev/sda1", "ext4", GIB)
    opened = backupfs.Opened(
        [chosen, Found("/dev/sda2", "swap", GIB)],
        chosen,
        True,
        "ro,noload",
        1.0,
    )
    lines = filerestore.opened_lines("ceph backups/x@y", opened)
    assert lines[0] == "read from ceph backups/x@y (appliance up in 1.0 s)"
    assert "mounted ro,noload; also found: /dev/sda2 (swap" in lines[1]
    assert lines[2].startswith("NEEDS RECOVERY: the ext4 filesystem")


def test_find_matches_the_last_component():
    paths = ["etc", "etc/ssh/sshd_config", "etc/ssh", "a.conf/b", "x/y.conf"]
    assert filerestore.matches(paths, "*.conf") == ["x/y.conf"]
    assert filerestore.matches(paths, "ssh*") == [
        "etc/ssh/sshd_config",
        "etc/ssh",
    ]
    assert filerestore.matches(paths, "ETC") == []
