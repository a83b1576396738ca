"""The image digest is a function of content and size, not allocation.

Images here are bytes in memory, written at random offsets; what an image
store would report as allocated is modelled by extent lists that cover
every non-zero byte and, at random, zeros written explicitly or whole
objects around the data. Small block sizes keep the images small while
crossing many block boundaries; one test runs the real 4 MiB block.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cinderbak import imagedigest
from cinderbak.imagedigest import (
    add_extent,
    allocated_blocks,
    block_count,
    block_range,
    combine,
    digest_blocks,
    digest_bytes,
    zero_digest,
)

MIB = 1024 * 1024


def spec_digest(data: bytes, block_size: int) -> str:
    """The definition, written out independently of the module."""
    blocks = [
        data[offset : offset + block_size]
        for offset in range(0, len(data), block_size)
    ]
    text = str(len(data)).encode("ascii") + b"\n"
    text += b"".join(hashlib.sha256(block).digest() for block in blocks)
    return hashlib.sha256(text).hexdigest()


@st.composite
def images(draw, max_size: int = 600):
    """(data, writes): an image of random size with random writes, some
    of which are zeros."""
    size = draw(st.integers(0, max_size))
    data = bytearray(size)
    writes = []
    for _ in range(draw(st.integers(0, 8))):
        if size == 0:
            break
        offset = draw(st.integers(0, size - 1))
        length = draw(st.integers(1, size - offset))
        chunk = draw(
            st.one_of(
                st.binary(min_size=length, max_size=length),
                st.just(bytes(length)),
            )
        )
        data[offset : offset + length] = chunk
        writes.append((offset, length))
    return bytes(data), writes


def nonzero_extents(data: bytes) -> list[tuple[int, int]]:
    """The exact runs of non-zero bytes: the least an allocation holds."""
    runs: list[tuple[int, int]] = []
    for index, byte in enumerate(data):
        if byte:
            add_extent(runs, index, 1)
    return runs


@st.composite
def allocations(draw, data: bytes, block_size: int):
    """Extents covering every non-zero byte, in one of several shapes."""
    exact = nonzero_extents(data)
    shape = draw(st.sampled_from(["exact", "padded", "objects", "all"]))
    if shape == "exact":
        return exact
    if shape == "all":
        return [(0, len(data))]
    if shape == "objects":
        # Whole "objects" of a size unrelated to the block size.
        object_size = draw(st.integers(1, 3 * block_size))
        touched = {
            i
            for off, n in exact
            for i in range(
                off // object_size, (off + n - 1) // object_size + 1
            )
        }
        return [(i * object_size, object_size) for i in sorted(touched)]
    extra = draw(
        st.lists(
            st.tuples(
                st.integers(-5, len(data) + 5), st.integers(0, block_size * 2)
            ),
            max_size=5,
        )
    )
    return exact + extra


class Image:
    """Bytes that count their reads, like a store would be read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


def digest_via_allocation(data, extents, block_size, write=None, depth=1):
    image = Image(data)
    allocated = allocated_blocks(extents, len(data), block_size)
    hexdigest, bytes_read = digest_blocks(
        len(data), allocated, image.read, write, block_size, depth
    )
    return hexdigest, bytes_read, image.reads


@settings(max_examples=300)
@given(st.data(), images(), st.integers(1, 64))
def test_same_bytes_any_allocation_same_digest(data, image, block_size):
    content, _ = image
    first = data.draw(allocations(content, block_size))
    second = data.draw(allocations(content, block_size))
    one, _, _ = digest_via_allocation(content, first, block_size)
    two, _, _ = digest_via_allocation(content, second, block_size)
    assert one == two == spec_digest(content, block_size)
    assert digest_bytes(content, block_size) == one


@settings(max_examples=300)
@given(st.data(), images(), st.integers(1, 64))
def test_one_flipped_byte_changes_the_digest(data, image, block_size):
    content, _ = image
    if not content:
        return
    where = data.draw(st.integers(0, len(content) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(content)
    flipped[where] ^= 1 << bit
    flipped = bytes(flipped)
    before, _, _ = digest_via_allocation(
        content, data.draw(allocations(content, block_size)), block_size
    )
    after, _, _ = digest_via_allocation(
        flipped, data.draw(allocations(flipped, block_size)), block_size
    )
    assert before != after


@given(images(), st.integers(1, 64), st.integers(1, 200))
def test_size_matters_even_when_the_tail_is_zeros(image, block_size, more):
    content, _ = image
    longer = content + bytes(more)
    assert digest_bytes(content, block_size) != digest_bytes(
        longer, block_size
    )


@settings(max_examples=200)
@given(st.data(), images(), st.integers(1, 64), st.sampled_from([1, 2, 5]))
def test_reads_only_allocated_blocks_and_writes_a_sparse_copy(
    data, image, block_size, depth
):
    content, _ = image
    extents = data.draw(allocations(content, block_size))
    allocated = allocated_blocks(extents, len(content), block_size)
    copy = bytearray(len(content))
    written: list[int] = []

    def write(offset: int, chunk: bytes) -> None:
        copy[offset : offset + len(chunk)] = chunk
        written.append(offset)

    hexdigest, bytes_read, reads = digest_via_allocation(
        content, extents, block_size, write, depth
    )
    expected_reads = [
        block_range(i, len(content), block_size) for r in allocated for i in r
    ]
    # Parallel reads may start in any order; each block is read once.
    assert sorted(reads) == expected_reads
    assert hexdigest == spec_digest(content, block_size)
    assert bytes_read == sum(length for _, length in expected_reads)
    assert bytes(copy) == content
    for offset in written:
        assert any(content[offset : offset + block_size])


@given(
    st.lists(st.tuples(st.integers(-50, 400), st.integers(-5, 100))),
    st.integers(0, 300),
    st.integers(1, 40),
)
def test_allocated_blocks_are_the_blocks_extents_touch(
    extents, size, block_size
):
    ranges = allocated_blocks(extents, size, block_size)
    brute = {
        index
        for index in range(block_count(size, block_size))
        for offset, length in extents
        if max(offset, index * block_size)
        < min(offset + length, (index + 1) * block_size, size)
    }
    assert [i for r in ranges for i in r] == sorted(brute)
    for earlier, later in zip(ranges, ranges[1:], strict=False):
        assert earlier.stop < later.start  # disjoint, not even adjacent


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(-3, 60))))
def test_add_extent_keeps_the_union(extents):
    merged: list[tuple[int, int]] = []
    for offset, length in sorted(extents):
        add_extent(merged, offset, length)
    covered = {o + k for o, n in extents for k in range(max(n, 0))}
    assert {o + k for o, n in merged for k in range(n)} == covered
    assert all(n > 0 for _, n in merged)
    for (o1, n1), (o2, _) in zip(merged, merged[1:], strict=False):
        assert o1 + n1 < o2


@given(st.integers(0, 10**13), st.integers(1, 2**23))
def test_blocks_cover_the_size_exactly(size, block_size):
    count = block_count(size, block_size)
    if count:
        last_offset, last_length = block_range(count - 1, size, block_size)
        assert 0 < last_length <= block_size
        assert last_offset + last_length == size
    else:
        assert size == 0


def test_real_block_size_sparse_image():
    """4 MiB blocks: data in block 0 and 2, a hole in block 1, a short
    last block; the hole is not read."""
    size = 2 * imagedigest.BLOCK_SIZE + 3 * MIB + 17
    content = bytearray(size)
    content[100:200] = b"a" * 100
    content[
        2 * imagedigest.BLOCK_SIZE + 5 : 2 * imagedigest.BLOCK_SIZE + 9
    ] = b"zzzz"
    content = bytes(content)
    extents = [(0, 4096), (2 * imagedigest.BLOCK_SIZE, 4096)]
    hexdigest, bytes_read, reads = digest_via_allocation(
        content, extents, imagedigest.BLOCK_SIZE
    )
    assert hexdigest == spec_digest(content, imagedigest.BLOCK_SIZE)
    assert bytes_read == imagedigest.BLOCK_SIZE + 3 * MIB + 17
    assert [offset for offset, _ in reads] == [0, 2 * imagedigest.BLOCK_SIZE]


def test_empty_image_digest_is_the_size_line_alone():
    assert combine(0, []) == hashlib.sha256(b"0\n").hexdigest()
    assert digest_bytes(b"") == combine(0, [])


def test_zero_digest_is_the_digest_of_zeros():
    assert zero_digest() == hashlib.sha256(bytes(4 * MIB)).digest()
    assert zero_digest(5) == hashlib.sha256(bytes(5)).digest()


@pytest.mark.parametrize("depth", [1, 3])
def test_a_failed_read_fails_the_digest(depth):
    def read(offset: int, length: int) -> bytes:
        if offset >= 48:
            raise OSError("EIO at 48")
        return bytes(length)

    with pytest.raises(OSError, match="EIO at 48"):
        digest_blocks(160, [range(0, 10)], read, None, 16, depth)


def test_short_read_is_an_error():
    with pytest.raises(OSError, match="short read"):
        digest_blocks(10, [range(0, 1)], lambda offset, length: b"x", None, 16)


def test_algorithm_name_fits_a_checksum_mark():
    # 'algorithm:size:hexdigest' marks split on ':'.
    assert ":" not in imagedigest.ALGORITHM
    # The name says how the image was cut.
    assert imagedigest.ALGORITHM.endswith(
        f"-{imagedigest.BLOCK_SIZE // MIB}MiB"
    )
