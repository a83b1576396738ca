"""Reading what blkid, dumpe2fs, e2fsck and xfs_repair say, without I/O.

The outputs below were captured from e2fsprogs 1.47.0 and xfsprogs 6.1.0
(Debian 12) on small images: fresh, crashed while mounted (journal or log
not replayed), with a corrupt inode table, superblock or root inode; the
image path is replaced by "image", as check_filesystem does.
"""

from __future__ import annotations

import pytest
from oslo_config import cfg

from cinderbak import fscheck
from cinderbak.fscheck import (
    FsCheck,
    Result,
    classify_probe,
    e2fsck_findings,
    e2fsck_stats,
    ext_needs_recovery,
    judge_ext,
    judge_xfs,
    parse_blkid_export,
    parse_xfs_repair,
)

E2FSCK_CLEAN = """\
e2fsck 1.47.0 (5-Feb-2023)
Pass 1: Checking inodes, blocks, and sizes
Pass 2: Checking directory structure
Pass 3: Checking directory connectivity
Pass 4: Checking reference counts
Pass 5: Checking group summary information
image: 11/16384 files (0.0% non-contiguous), 9513/65536 blocks
"""

# Crashed while mounted: the superblock's counts lag, which e2fsck notes
# but does not count as an error (exit 0).
E2FSCK_UNREPLAYED = """\
e2fsck 1.47.0 (5-Feb-2023)
Warning: skipping journal recovery because doing a read-only filesystem check.
Pass 1: Checking inodes, blocks, and sizes
Pass 2: Checking directory structure
Pass 3: Checking directory connectivity
Pass 4: Checking reference counts
Pass 5: Checking group summary information
Free blocks count wrong (56023, counted=55719).
Fix? no

Free inodes count wrong (16373, counted=16073).
Fix? no

image: 11/16384 files (9.1% non-contiguous), 9513/65536 blocks
"""

# The first 4 KiB of the inode table overwritten (exit 12).
E2FSCK_BAD_INODE_TABLE = """\
e2fsck 1.47.0 (5-Feb-2023)
Superblock has an invalid journal (inode 8).
Clear? no

e2fsck: The journal superblock is corrupt while checking journal for image
e2fsck: Cannot proceed with file system check

image: ********** WARNING: Filesystem still has errors **********

"""

# s_inodes_count overwritten (exit 4), shortened.
E2FSCK_BAD_SUPERBLOCK = """\
e2fsck 1.47.0 (5-Feb-2023)
ext2fs_open2: Superblock checksum does not match superblock
e2fsck: Superblock invalid, trying backup blocks...
Pass 1: Checking inodes, blocks, and sizes
Pass 5: Checking group summary information
Block bitmap differences:  +(8193--8450) +(24577--24834)
Fix? no

Padding at end of inode bitmap is not set. Fix? no

Inode bitmap differences: Group 1 inode bitmap does not match checksum.
IGNORED.
Group 2 inode bitmap does not match checksum.
IGNORED.

image: ********** WARNING: Filesystem still has errors **********

image: 11/16384 files (0.0% non-contiguous), 9513/65536 blocks
"""

DUMPE2FS_HEADER = """\
Filesystem volume name:   <none>
Last mounted on:          /mnt
Filesystem magic number:  0xEF53
Filesystem features:      has_journal ext_attr resize_inode dir_index \
filetype {extra}extent 64bit flex_bg sparse_super large_file huge_file \
dir_nlink extra_isize metadata_csum
Filesystem flags:         signed_directory_hash
Filesystem state:         clean
Journal features:         journal_64bit journal_checksum_v3
"""

XFS_PREAMBLE = """\
Cannot get host filesystem geometry.
Repair may fail if there is a sector size mismatch between
the image and the host filesystem.
Phase 1 - find and verify superblock...
Phase 2 - using internal log
        - zero log...
"""
XFS_ALERT = """\
ALERT: The filesystem has valuable metadata changes in a log which is being
ignored because the -n option was used.  Expect spurious inconsistencies
which may be resolved by first mounting the filesystem to replay the log.
"""
XFS_PHASES = """\
        - scan filesystem freespace and inode maps...
        - found root inode chunk
Phase 3 - for each AG...
        - scan (but don't clear) agi unlinked lists...
        - agno = 0
Phase 4 - check for duplicate blocks...
        - agno = 0
No modify flag set, skipping phase 5
Phase 6 - check inode connectivity...
        - traversing filesystem ...
Phase 7 - verify link counts...
No modify flag set, skipping filesystem flush and exiting.
"""
XFS_ROOT_INODE = """\
root inode 128 has bad type 0x8000
would reset to directory
root inode would be lost
root inode 128 has bad type 0x8000
would reinitialize root directory
disconnected inode 131, would move to lost+found
"""


# -- blkid -----------------------------------------------------------------


def test_blkid_export_fields():
    fields = parse_blkid_export(
        "DEVNAME=image\nUUID=8a2b\nBLOCK_SIZE=512\nTYPE=xfs\n"
        "USAGE=filesystem\nLABEL=my\\ data\n"
    )
    assert fields["TYPE"] == "xfs"
    assert fields["LABEL"] == "my data"


@pytest.mark.parametrize("fstype", ["ext2", "ext3", "ext4", "xfs"])
def test_checked_filesystems(fstype):
    probe = classify_probe(0, f"DEVNAME=image\nTYPE={fstype}\n", "")
    assert probe.fstype == fstype and probe.reason is None


@pytest.mark.parametrize(
    ("code", "output", "reason"),
    [
        (2, "", "no filesystem or partition table"),
        (0, "DEVNAME=image\nPTTYPE=dos\n", "partition table (dos)"),
        (0, "DEVNAME=image\nPTTYPE=gpt\nPTUUID=x\n", "partition table (gpt)"),
        (0, "TYPE=swap\nUSAGE=other\n", "swap (other) is not checked"),
        (0, "TYPE=LVM2_member\nUSAGE=raid\n", "LVM2_member (raid)"),
        (0, "TYPE=crypto_LUKS\nUSAGE=crypto\n", "crypto_LUKS (crypto)"),
        (8, "", "ambivalent"),
        (4, "", "blkid -p failed (exit 4): bad usage"),
    ],
)
def test_what_is_not_checked_says_why(code, output, reason):
    probe = classify_probe(code, output, "bad usage")
    assert reason in probe.reason


# -- ext -------------------------------------------------------------------


def test_needs_recovery_feature():
    assert ext_needs_recovery(DUMPE2FS_HEADER.format(extra="needs_recovery "))
    assert not ext_needs_recovery(DUMPE2FS_HEADER.format(extra=""))
    assert not ext_needs_recovery("")


def test_e2fsck_findings_drop_progress_and_prompts():
    assert e2fsck_findings(E2FSCK_CLEAN) == []
    assert e2fsck_findings(E2FSCK_BAD_SUPERBLOCK) == [
        "ext2fs_open2: Superblock checksum does not match superblock",
        "e2fsck: Superblock invalid, trying backup blocks...",
        "Block bitmap differences:  +(8193--8450) +(24577--24834)",
        "Padding at end of inode bitmap is not set.",
        "Inode bitmap differences: Group 1 inode bitmap does not match "
        "checksum.",
        "Group 2 inode bitmap does not match checksum.",
    ]


def test_e2fsck_stats():
    assert e2fsck_stats(E2FSCK_CLEAN) == "11/16384 files, 9513/65536 blocks"
    assert e2fsck_stats(E2FSCK_BAD_INODE_TABLE) is None


def test_ext_clean():
    check = judge_ext("ext4", 0, False, E2FSCK_CLEAN)
    assert check == FsCheck(
        "ext4",
        Result.CLEAN,
        False,
        0,
        "ext4 clean (e2fsck -fn): 11/16384 files, 9513/65536 blocks",
    )


def test_lagging_counts_alone_are_clean():
    assert judge_ext("ext4", 0, False, E2FSCK_UNREPLAYED).result == "clean"


def test_journal_needing_recovery():
    check = judge_ext("ext4", 0, True, E2FSCK_UNREPLAYED)
    assert check.result == Result.NEEDS_RECOVERY == "needs-recovery"
    assert check.needs_recovery
    assert "no problems" in check.summary


def test_problems_without_replay_are_not_called_errors():
    check = judge_ext("ext3", 4, True, E2FSCK_BAD_SUPERBLOCK)
    assert check.result == Result.NEEDS_RECOVERY
    assert "Superblock checksum does not match" in check.summary


def test_ext_errors():
    check = judge_ext("ext4", 4, False, E2FSCK_BAD_SUPERBLOCK)
    assert check.result == Result.ERRORS
    assert check.exit_code == 4
    assert check.summary.startswith(
        "ext4 errors (e2fsck -fn exit 4): ext2fs_open2: Superblock checksum"
    )
    assert check.summary.endswith("(+4 more)")


def test_ext_could_not_finish_is_an_error_even_when_needing_recovery():
    check = judge_ext("ext4", 12, True, E2FSCK_BAD_INODE_TABLE)
    assert check.result == Result.ERRORS
    assert "journal superblock is corrupt" in check.summary


def test_e2fsck_too_old_for_the_image_is_not_an_image_error():
    output = (
        "e2fsck 1.47.0 (5-Feb-2023)\n"
        "image has unsupported feature(s): FEATURE_I31\n"
        "e2fsck: Get a newer version of e2fsck!\n"
    )
    assert judge_ext("ext4", 8, False, output).result == "not-checked"


@pytest.mark.parametrize("code", [16, 32, -9])
def test_e2fsck_usage_cancel_or_kill_is_not_checked(code):
    assert judge_ext("ext4", code, False, "").result == "not-checked"


# -- xfs -------------------------------------------------------------------


def test_xfs_clean():
    output = XFS_PREAMBLE + XFS_PHASES
    assert parse_xfs_repair(output).findings == []
    assert judge_xfs(0, output) == FsCheck(
        "xfs", Result.CLEAN, False, 0, "xfs clean (xfs_repair -n)"
    )


def test_xfs_dirty_log_alone_needs_recovery():
    # xfs_repair -n exits 1 for a dirty log even when nothing else is
    # wrong.
    output = XFS_PREAMBLE + XFS_ALERT + XFS_PHASES
    report = parse_xfs_repair(output)
    assert report.log_dirty and report.findings == []
    check = judge_xfs(1, output)
    assert check.result == Result.NEEDS_RECOVERY
    assert check.needs_recovery
    assert "no other problems" in check.summary


def test_xfs_dirty_log_with_findings_still_needs_recovery():
    output = XFS_PREAMBLE + XFS_ALERT + XFS_ROOT_INODE + XFS_PHASES
    check = judge_xfs(1, output)
    assert check.result == Result.NEEDS_RECOVERY
    assert "root inode 128 has bad type 0x8000" in check.summary


def test_xfs_corruption():
    output = XFS_PREAMBLE + XFS_ROOT_INODE + XFS_PHASES
    report = parse_xfs_repair(output)
    assert not report.log_dirty
    assert report.findings == [
        "root inode 128 has bad type 0x8000",
        "would reset to directory",
        "root inode would be lost",
        "would reinitialize root directory",
        "disconnected inode 131, would move to lost+found",
    ]
    check = judge_xfs(1, output)
    assert check.result == Result.ERRORS
    assert check.summary == (
        "xfs errors (xfs_repair -n exit 1): root inode 128 has bad type "
        "0x8000; would reset to directory (+3 more)"
    )


def test_xfs_repair_failing_is_not_checked():
    check = judge_xfs(2, "fatal error -- couldn't allocate memory\n")
    assert check.result == Result.NOT_CHECKED
    assert "couldn't allocate memory" in check.summary


# -- summaries and options -------------------------------------------------


def test_summaries_are_one_short_line():
    findings = "\n".join(f"Inode {n} has a problem" for n in range(500))
    check = judge_ext("ext4", 4, False, "x" * 400 + "\n" + findings)
    assert "\n" not in check.summary
    assert len(check.summary) <= fscheck.SUMMARY_LIMIT
    assert check.summary.endswith("(+499 more)")
    reason = FsCheck.not_checked("why\n" * 200)
    assert len(reason.summary) <= fscheck.SUMMARY_LIMIT
    assert "\n" not in reason.summary


def test_scratch_dir_defaults_under_state_path():
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.StrOpt("state_path", default="/var/lib/cb"))
    fscheck.register_opts(conf)
    conf(args=[], default_config_files=[])
    assert fscheck.scratch_dir(conf) == "/var/lib/cb/verify"
    assert conf.verify.fsck_timeout >= 10
