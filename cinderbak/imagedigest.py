"""A checksum of a block device image's content, blind to its allocation.

A backup is verified by comparing a checksum of its source, taken at
backup time, with one of the volume restored from it. The two images hold
the same bytes but not the same allocation: a restore writes zeros that
the source never allocated, or leaves holes where the source had zeros.
So the checksum is defined on content only:

* the first ``size`` bytes are split into 4 MiB blocks (the last one may
  be shorter);
* each block's digest is the SHA-256 of its bytes;
* the image digest is the SHA-256 of the ASCII decimal ``size``, a
  newline, then the block digests in order.

Only blocks that intersect an allocated extent are read: a hole reads as
zeros, and the digest of a block of zeros is known in advance, so an
empty terabyte costs nothing to checksum. The result names the algorithm
("sha256-4MiB") so a stored checksum says how it was made.

The arithmetic (blocks, extents, combining) is pure; digest_image reads
an ``rbd.Image``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

BLOCK_SIZE = 4 * 1024 * 1024
ALGORITHM = "sha256-4MiB"
# Reads in flight: on the local stack (one OSD) 4 parallel reads run at
# 1.8 times the rate of one (bench/bench_digest.py); more gain little and
# cost a block each.
READ_DEPTH = 4

Extent = tuple[int, int]  # (offset, length) in bytes
Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes
Writer = Callable[[int, bytes], Any]  # (offset, data)


@dataclasses.dataclass(frozen=True)
class ImageDigest:
    """The checksum of an image and what it cost."""

    algorithm: str
    hexdigest: str
    size: int  # bytes covered
    bytes_read: int  # bytes actually read (allocated blocks only)
    seconds: float


# -- pure: blocks, extents, combining ------------------------------------


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-size // block_size)


def block_range(index: int, size: int, block_size: int = BLOCK_SIZE) -> Extent:
    """(offset, length) of block ``index`` of an image of ``size`` bytes."""
    offset = index * block_size
    return offset, min(block_size, size - offset)


def add_extent(merged: list[Extent], offset: int, length: int) -> None:
    """Append an extent, coalescing it with the last one when they touch
    or overlap, so the extents of a fully allocated image stay one."""
    if length <= 0:
        return
    if merged:
        last_offset, last_length = merged[-1]
        last_end = last_offset + last_length
        if last_offset <= offset <= last_end:
            end = max(last_end, offset + length)
            merged[-1] = (last_offset, end - last_offset)
            return
    merged.append((offset, length))


def allocated_blocks(
    extents: Iterable[Extent], size: int, block_size: int = BLOCK_SIZE
) -> list[range]:
    """The indexes of the blocks within ``size`` that intersect any of
    ``extents``, as sorted, disjoint, non-adjacent ranges."""
    spans: list[Extent] = []
    for offset, length in sorted(extents):
        start = max(offset, 0)
        end = min(offset + length, size)
        if end <= start:
            continue
        first, last = start // block_size, (end - 1) // block_size
        add_extent(spans, first, last - first + 1)
    return [range(first, first + count) for first, count in spans]


@functools.cache
def zero_digest(length: int = BLOCK_SIZE) -> bytes:
    """The digest of ``length`` zero bytes: what a hole's block yields."""
    return hashlib.sha256(bytes(length)).digest()


def block_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def combine(size: int, block_digests: Iterable[bytes]) -> str:
    """The image digest from its block digests, in order."""
    image = hashlib.sha256(b"%d\n" % size)
    for digest in block_digests:
        image.update(digest)
    return image.hexdigest()


def digest_bytes(data: bytes, block_size: int = BLOCK_SIZE) -> str:
    """The image digest of bytes in memory (the definition, spelled out)."""
    size = len(data)
    return combine(
        size,
        (
            block_digest(data[offset : offset + length])
            for offset, length in (
                block_range(i, size, block_size)
                for i in range(block_count(size, block_size))
            )
        ),
    )


@dataclasses.dataclass
class _Tally:
    bytes_read: int = 0


def _allocated_ranges(
    size: int, allocated: list[range], block_size: int
) -> Iterator[Extent]:
    for blocks in allocated:
        for index in blocks:
            yield block_range(index, size, block_size)


def _read_ahead(
    read: Reader, extents: Iterator[Extent], depth: int
) -> Generator[bytes, None, None]:
    """Yield ``read(offset, length)`` of each extent in order, keeping up
    to ``depth`` reads in flight (a cluster serves parallel reads faster
    than one at a time); memory holds at most ``depth + 1`` results."""
    if depth <= 1:
        for offset, length in extents:
            yield read(offset, length)
        return
    pool = ThreadPoolExecutor(depth, thread_name_prefix="imagedigest")
    try:
        pending = collections.deque(
            pool.submit(read, *extent)
            for extent in itertools.islice(extents, depth)
        )
        while pending:
            data = pending.popleft().result()
            following = next(extents, None)
            if following is not None:
                pending.append(pool.submit(read, *following))
            yield data
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _block_digests(
    size: int,
    allocated: list[range],
    blocks: Iterator[bytes],
    write: Writer | None,
    tally: _Tally,
    block_size: int,
) -> Iterator[bytes]:
    """Yield every block's digest: zero_digest for blocks outside
    ``allocated``, the next of ``blocks`` (the allocated blocks' bytes,
    in order) hashed for the others; hand the allocated blocks that are
    not all zeros to ``write``."""
    zeros = bytes(block_size)
    ranges = iter(allocated)
    current = next(ranges, None)
    for index in range(block_count(size, block_size)):
        while current is not None and index >= current.stop:
            current = next(ranges, None)
        offset, length = block_range(index, size, block_size)
        if current is None or index < current.start:
            yield zero_digest(length)
            continue
        data = next(blocks)
        if len(data) != length:
            raise OSError(
                f"short read at {offset}: {len(data)} of {length} bytes"
            )
        tally.bytes_read += length
        if data == zeros[:length]:
            yield zero_digest(length)
            continue
        if write is not None:
            write(offset, data)
        yield block_digest(data)


def digest_blocks(
    size: int,
    allocated: list[range],
    read: Reader,
    write: Writer | None = None,
    block_size: int = BLOCK_SIZE,
    depth: int = 1,
) -> tuple[str, int]:
    """Digest an image of ``size`` bytes whose blocks outside
    ``allocated`` (from allocated_blocks) read as zeros: ``read`` each
    allocated block, ``depth`` at a time, and pass those that are not all
    zeros to ``write`` (in order, from the calling thread).

    Return (hexdigest, bytes read). Memory use is ``depth + 1`` blocks.
    """
    tally = _Tally()
    blocks = _read_ahead(
        read, _allocated_ranges(size, allocated, block_size), depth
    )
    try:
        hexdigest = combine(
            size,
            _block_digests(size, allocated, blocks, write, tally, block_size),
        )
    finally:
        blocks.close()
    return hexdigest, tally.bytes_read


# -- I/O: an rbd.Image -----------------------------------------------------


def allocated_extents(image: Any, size: int) -> list[Extent]:
    """The extents of ``image`` (an ``rbd.Image``, at its snapshot if it
    was opened at one) that may hold data, within ``size`` bytes.

    ``diff_iterate`` from no snapshot lists what was written since the
    image's creation, its parent's data included for a clone. With
    ``whole_object`` it answers from the object map when fast-diff is on
    (one read, no request per object) and reports whole objects, which is
    coarser but never misses data; without fast-diff librbd falls back
    to asking every object. Extents reported as not existing read as
    zeros and are left out.
    """
    merged: list[Extent] = []

    def found(offset: int, length: int, exists: bool) -> None:
        if exists:
            add_extent(merged, offset, length)

    if size > 0:
        image.diff_iterate(
            0, size, None, found, include_parent=True, whole_object=True
        )
    return merged


def digest_image(
    image: Any,
    size: int | None = None,
    sink: IO[bytes] | None = None,
    *,
    depth: int = READ_DEPTH,
) -> ImageDigest:
    """Digest the first ``size`` bytes (default: all) of an ``rbd.Image``.

    With ``sink``, a seekable binary file opened for writing, also make
    it a sparse raw copy of those bytes in the same pass: its content is
    replaced, non-zero blocks are written at their offsets and the file
    is truncated to ``size``, leaving holes for the rest. ``depth``
    blocks are read at a time; memory holds ``depth + 1`` blocks.
    """
    started = time.perf_counter()
    image_size = image.size()
    size = image_size if size is None else size
    if not 0 <= size <= image_size:
        raise ValueError(
            f"cannot digest {size} bytes of a {image_size}-byte image"
        )
    allocated = allocated_blocks(allocated_extents(image, size), size)
    write = None
    if sink is not None:
        sink.seek(0)
        sink.truncate(0)

        def write(offset: int, data: bytes) -> None:
            sink.seek(offset)
            sink.write(data)

    hexdigest, bytes_read = digest_blocks(
        size, allocated, image.read, write, depth=depth
    )
    if sink is not None:
        sink.truncate(size)
        sink.flush()
    return ImageDigest(
        ALGORITHM,
        hexdigest,
        size,
        bytes_read,
        time.perf_counter() - started,
    )
