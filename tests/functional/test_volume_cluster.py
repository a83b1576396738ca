"""Checksums and filesystem checks read through the read-only client.

Test images are created directly on cluster A with the admin client, in
pool ``volumes``, named ``cinderbak-test-<uuid>`` (never ``volume-*``, which
are Cinder's), and removed afterwards; they are read back only through
``client.cinderbak-ro``, as cinderbak reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import re
import subprocess
import uuid

import pytest
import rbd

from cinderbak import imagedigest
from cinderbak.fscheck import Result, check_filesystem
from cinderbak.imagedigest import digest_image
from cinderbak.volume_cluster import VolumeCluster
from tests import localstack

MIB = 1024 * 1024
BLOCK = imagedigest.BLOCK_SIZE
# Not a multiple of the block size: the last block is short.
SIZE = 64 * MIB + 1000
# (offset, data): scattered, one across a block boundary, one at the end.
WRITES = [
    (0, b"boot sector" * 40),  # blocks 0, 1, 2 and 3, 10, 16 (short)
    (5 * MIB + 100, os.urandom(3000)),
    (3 * BLOCK - 10, os.urandom(20)),
    (40 * MIB, os.urandom(MIB + 5)),
    (SIZE - 100, b"tail" * 25),
]


@pytest.fixture(scope="module")
def ceph_a(stack) -> localstack.CephCluster:
    return stack.ceph("a")


@pytest.fixture(scope="module")
def cluster(stack, ceph_a):
    readonly = stack.readonly_user
    connected = VolumeCluster(
        ceph_a.conf, readonly.user, [ceph_a.pool], readonly.keyring
    )
    yield connected
    connected.close()


@pytest.fixture(scope="module")
def admin_io(stack):
    with localstack.ioctx(stack, "a") as io:
        yield io


@pytest.fixture
def make_image(admin_io):
    """Create an image as admin (deleted, with its snapshots, after)."""
    made: list[str] = []

    def make(size: int) -> str:
        name = f"cinderbak-test-{uuid.uuid4()}"
        rbd.RBD().create(admin_io, name, size)
        made.append(name)
        return name

    make.adopt = made.append  # an image made otherwise, to remove too
    yield make
    for name in reversed(made):  # clones before their parents
        with rbd.Image(admin_io, name) as image:
            for snap in image.list_snaps():
                if image.is_protected_snap(snap["name"]):
                    image.unprotect_snap(snap["name"])
                image.remove_snap(snap["name"])
        rbd.RBD().remove(admin_io, name)


def write(io, name: str, writes) -> None:
    with rbd.Image(io, name) as image:
        for offset, data in writes:
            assert image.write(data, offset) == len(data)
        image.flush()


def expected_content(size: int, writes) -> bytes:
    content = bytearray(size)
    for offset, data in writes:
        content[offset : offset + len(data)] = data
    return bytes(content)


def copy_in(io, name: str, path: pathlib.Path) -> None:
    """Write a raw file into an image, skipping zero blocks."""
    with rbd.Image(io, name) as image, path.open("rb") as source:
        offset = 0
        while chunk := source.read(BLOCK):
            if any(chunk):
                image.write(chunk, offset)
            offset += len(chunk)
        image.flush()


def file_sha256(path: pathlib.Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sparse_file(path: pathlib.Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def allocated_bytes(path: pathlib.Path) -> int:
    return path.stat().st_blocks * 512


# -- the read-only view ----------------------------------------------------


def test_the_client_cannot_write(cluster, make_image, admin_io):
    name = make_image(8 * MIB)
    with cluster.open_named(name) as image:
        with pytest.raises(rbd.ReadOnlyImage):
            image.write(b"x", 0)
    with pytest.raises(LookupError, match=name):
        with cluster.open_named(name, snapshot="no-such-snapshot"):
            pass


def test_volumes_and_their_snapshots(cluster, alice, make_volume):
    volume = make_volume(alice)
    storage = alice.block_storage
    snapshot = storage.create_snapshot(
        volume_id=volume.id, name=f"ft-{uuid.uuid4().hex[:8]}"
    )
    try:
        storage.wait_for_status(
            snapshot, status="available", failures=["error"], wait=120
        )
        assert cluster.snapshots(volume.id) == [f"snapshot-{snapshot.id}"]
        with cluster.open_image(
            volume.id, snapshot=f"snapshot-{snapshot.id}"
        ) as image:
            digest = digest_image(image)
        # A new volume is all holes: nothing read, the digest of zeros.
        size = volume.size * 1024**3
        assert digest.bytes_read == 0
        zeros = hashlib.sha256(bytes(BLOCK)).digest()
        assert (
            digest.hexdigest
            == hashlib.sha256(
                b"%d\n" % size + zeros * (size // BLOCK)
            ).hexdigest()
        )
    finally:
        storage.delete_snapshot(snapshot, ignore_missing=True)
        storage.wait_for_delete(snapshot, wait=120)
    unknown = str(uuid.uuid4())
    assert cluster.snapshots(unknown) == []
    with pytest.raises(LookupError, match=f"volume-{unknown}"):
        with cluster.open_image(unknown):
            pass


# -- digests ---------------------------------------------------------------


def test_digest_sees_content_not_allocation(cluster, make_image, admin_io):
    sparse = make_image(SIZE)
    write(admin_io, sparse, WRITES)
    with rbd.Image(admin_io, sparse) as image:
        image.create_snap("s1")
    write(admin_io, sparse, [(20 * MIB, b"after the snapshot")])
    content = expected_content(SIZE, WRITES)
    # The same bytes, every block written, zeros included.
    dense = make_image(SIZE)
    write(
        admin_io,
        dense,
        [(o, content[o : o + BLOCK]) for o in range(0, SIZE, BLOCK)],
    )

    with cluster.open_named(sparse, snapshot="s1") as image:
        at_snapshot = digest_image(image)
    with cluster.open_named(dense) as image:
        full = digest_image(image)
    assert at_snapshot.hexdigest == full.hexdigest
    assert at_snapshot.hexdigest == imagedigest.digest_bytes(content)
    assert at_snapshot.algorithm == "sha256-4MiB"
    assert at_snapshot.size == full.size == SIZE
    # Only the blocks holding data were read from the sparse one.
    assert at_snapshot.bytes_read == 5 * BLOCK + SIZE % BLOCK
    assert full.bytes_read == SIZE

    with cluster.open_named(sparse) as image:
        head = digest_image(image)
    assert head.hexdigest != at_snapshot.hexdigest

    with cluster.open_named(dense) as image:
        shorter = digest_image(image, size=SIZE - 1000)
        with pytest.raises(ValueError):
            digest_image(image, size=SIZE + 1)
    assert shorter.size == SIZE - 1000
    assert shorter.hexdigest == imagedigest.digest_bytes(
        content[: SIZE - 1000]
    )

    write(admin_io, dense, [(30 * MIB + 7, b"\x01")])  # in a zero block
    with cluster.open_named(dense) as image:
        flipped = digest_image(image)
    assert flipped.hexdigest != full.hexdigest


def test_a_clone_includes_its_parents_data(cluster, make_image, admin_io):
    """Volumes made from an image or a snapshot are clones: their data
    is partly their parent's, and belongs in their digest."""
    parent = make_image(SIZE)
    write(admin_io, parent, WRITES)
    with rbd.Image(admin_io, parent) as image:
        image.create_snap("base")
        image.protect_snap("base")
    clone = f"cinderbak-test-{uuid.uuid4()}"
    rbd.RBD().clone(admin_io, parent, "base", admin_io, clone)
    make_image.adopt(clone)
    changes = [(5 * MIB, b"changed in the clone"), (60 * MIB, b"new")]
    write(admin_io, clone, changes)
    with cluster.open_named(clone) as image:
        digest = digest_image(image)
    assert digest.hexdigest == imagedigest.digest_bytes(
        expected_content(SIZE, WRITES + changes)
    )


def test_sparse_copy_equals_rbd_export(
    stack, ceph_a, cluster, make_image, admin_io, tmp_path
):
    name = make_image(SIZE)
    write(admin_io, name, WRITES)
    with rbd.Image(admin_io, name) as image:
        image.create_snap("s1")
    copy = tmp_path / "copy.raw"
    copy.write_bytes(b"stale" * MIB)  # replaced, not patched
    with copy.open("r+b") as sink, cluster.open_named(name, "s1") as image:
        digest = digest_image(image, sink=sink)
    exported = tmp_path / "export.raw"
    readonly = stack.readonly_user
    subprocess.run(
        [
            "rbd",
            "-c",
            ceph_a.conf,
            "--id",
            readonly.user,
            "--keyring",
            readonly.keyring,
            "export",
            f"{ceph_a.pool}/{name}@s1",
            str(exported),
        ],
        check=True,
        capture_output=True,
    )
    assert copy.stat().st_size == exported.stat().st_size == SIZE
    assert file_sha256(copy) == file_sha256(exported)
    assert imagedigest.digest_bytes(copy.read_bytes()) == digest.hexdigest
    # Holes stayed holes: only the 6 blocks holding data (the last one
    # short) take space.
    assert allocated_bytes(copy) < 6 * BLOCK


# -- filesystem checks -------------------------------------------------------


def make_ext4(path: pathlib.Path, size: int, tmp_path: pathlib.Path) -> None:
    """An ext4 with a journal and a few files, made without mounting."""
    content = tmp_path / "content"
    (content / "dir").mkdir(parents=True)
    for n in range(50):
        (content / "dir" / f"file{n}").write_text(f"record {n}\n" * 100)
    sparse_file(path, size)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(content), str(path)],
        check=True,
        capture_output=True,
    )


def make_xfs(path: pathlib.Path, size: int, _tmp_path) -> None:
    sparse_file(path, size)
    subprocess.run(
        ["mkfs.xfs", "-q", "-f", str(path)], check=True, capture_output=True
    )


@pytest.mark.parametrize(
    ("fstype", "make", "size"),
    [("ext4", make_ext4, 96 * MIB), ("xfs", make_xfs, 320 * MIB)],
)
def test_filesystem_through_the_cluster_is_clean(
    cluster, make_image, admin_io, tmp_path, fstype, make, size
):
    original = tmp_path / "original.raw"
    make(original, size, tmp_path)
    name = make_image(size)
    copy_in(admin_io, name, original)
    copy = tmp_path / "copy.raw"
    with copy.open("wb") as sink, cluster.open_named(name) as image:
        digest = digest_image(image, sink=sink)
    assert file_sha256(copy) == file_sha256(original)
    assert digest.hexdigest == imagedigest.digest_bytes(copy.read_bytes())
    before = file_sha256(copy)
    check = check_filesystem(str(copy), timeout=300)
    assert (check.fstype, check.result) == (fstype, Result.CLEAN), check
    assert check.exit_code == 0 and not check.needs_recovery
    assert str(copy) not in check.summary
    assert file_sha256(copy) == before  # checked, not touched


def inode_table_offset(path: pathlib.Path) -> int:
    """Byte offset of group 0's inode table, from dumpe2fs."""
    out = subprocess.run(
        ["dumpe2fs", str(path)], check=True, capture_output=True, text=True
    ).stdout
    block_size = int(re.search(r"^Block size:\s+(\d+)", out, re.M)[1])
    first = int(re.search(r"Inode table at (\d+)-", out)[1])
    return first * block_size


@contextlib.contextmanager
def opened(path: pathlib.Path):
    with path.open("r+b") as f:
        yield f


def test_corrupt_ext4_has_errors(tmp_path):
    image = tmp_path / "ext4.raw"
    make_ext4(image, 64 * MIB, tmp_path)
    inodes = tmp_path / "inodes.raw"
    inodes.write_bytes(image.read_bytes())
    with opened(inodes) as f:
        f.seek(inode_table_offset(inodes))
        f.write(b"\xa5" * 8192)
    superblock = tmp_path / "superblock.raw"
    superblock.write_bytes(image.read_bytes())
    with opened(superblock) as f:
        f.seek(1024)  # s_inodes_count, the superblock's first field
        f.write(b"\xff\xff\xff\x7f")
    for damaged in (inodes, superblock):
        before = file_sha256(damaged)
        check = check_filesystem(str(damaged), timeout=120)
        assert (check.fstype, check.result) == ("ext4", Result.ERRORS), check
        assert check.exit_code & 4
        assert file_sha256(damaged) == before
    assert check_filesystem(str(image), timeout=120).result == Result.CLEAN


def test_ext4_needing_recovery(tmp_path):
    image = tmp_path / "ext4.raw"
    make_ext4(image, 64 * MIB, tmp_path)
    subprocess.run(
        ["debugfs", "-w", "-R", "feature needs_recovery", str(image)],
        check=True,
        capture_output=True,
    )
    check = check_filesystem(str(image), timeout=120)
    assert check.result == Result.NEEDS_RECOVERY, check
    assert check.needs_recovery and check.fstype == "ext4"


def test_what_is_not_checked(tmp_path):
    blank = tmp_path / "blank.raw"
    sparse_file(blank, 16 * MIB)
    check = check_filesystem(str(blank))
    assert check.result == Result.NOT_CHECKED
    assert "no filesystem" in check.summary
    partitioned = tmp_path / "partitioned.raw"
    sparse_file(partitioned, 16 * MIB)
    with opened(partitioned) as f:
        # One Linux partition in an MBR: a disk, not a filesystem.
        f.seek(446)
        f.write(bytes([0, 0, 0, 0, 0x83, 0, 0, 0]))
        f.write((2048).to_bytes(4, "little") + (8192).to_bytes(4, "little"))
        f.seek(510)
        f.write(b"\x55\xaa")
    check = check_filesystem(str(partitioned))
    assert check.result == Result.NOT_CHECKED
    assert "partition table (dos)" in check.summary
    with pytest.raises(FileNotFoundError):
        check_filesystem(str(tmp_path / "missing.raw"))


def test_check_stops_at_its_timeout(tmp_path):
    image = tmp_path / "xfs.raw"
    make_xfs(image, 320 * MIB, tmp_path)
    check = check_filesystem(str(image), timeout=0.01)
    assert check.result == Result.NOT_CHECKED
    assert "check timed out after 0.01 s" in check.summary
