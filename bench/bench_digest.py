"""How fast is an image checksum on the volume cluster, and how much memory?

Run: ``python bench/bench_digest.py`` (from the repository root, with the
local stack up). For each fill level it creates, as admin on cluster A,
an image ``cinderbak-test-bench-<uuid>`` (default 1 GiB) with that
percentage of its 4 MiB blocks written, spread evenly, then checksums it
through the read-only client and prints

* logical MiB/s (image size / time) and read MiB/s (bytes read / time),
* the time diff_iterate takes to list the allocated extents,
* the peak RSS during the checksum, above the process's RSS before it
  (the kernel's high-water mark, reset through /proc/self/clear_refs;
  the allocator keeps freed blocks, so later runs may show +0),
* the same with a sparse raw copy written to a scratch file,

with one read at a time and with READ_DEPTH reads in flight. Run it again
with ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment to see the
working set alone: glibc then returns each freed block at once.

A last row checksums an empty thin image (default 100 GiB) to show that
holes cost no reading. Images and copies are deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rbd  # noqa: E402

from cinderbak.imagedigest import (  # noqa: E402
    BLOCK_SIZE,
    READ_DEPTH,
    allocated_extents,
    digest_image,
)
from cinderbak.volume_cluster import VolumeCluster  # noqa: E402
from tests import localstack  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB


def status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def measured(fn: Callable[[], object]) -> tuple[object, float, int]:
    """Run fn; return (result, seconds, peak RSS above the start, KiB)."""
    before = status_kib("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, status_kib("VmHWM") - before


def fill(io, name: str, size: int, percent: float) -> int:
    """Write ``percent`` of the image's blocks, evenly spread; return how
    many blocks were written."""
    blocks = -(-size // BLOCK_SIZE)
    wanted = round(blocks * percent / 100)
    payload = bytearray(os.urandom(BLOCK_SIZE))
    with rbd.Image(io, name) as image:
        for k in range(wanted):
            index = k * blocks // wanted
            payload[:8] = index.to_bytes(8, "little")
            offset = index * BLOCK_SIZE
            image.write(
                bytes(payload[: min(BLOCK_SIZE, size - offset)]), offset
            )
        image.flush()
    return wanted


@contextlib.contextmanager
def bench_image(io, size: int) -> Iterator[str]:
    name = f"cinderbak-test-bench-{uuid.uuid4()}"
    rbd.RBD().create(io, name, size)
    try:
        yield name
    finally:
        rbd.RBD().remove(io, name)


def rate(size: int, seconds: float) -> float:
    return size / MIB / seconds if seconds else float("inf")


def run_level(
    io,
    cluster: VolumeCluster,
    size: int,
    percent: float,
    depths: list[int],
    repeat: int,
    scratch: str,
) -> None:
    with bench_image(io, size) as name:
        written = fill(io, name, size, percent)
        with cluster.open_named(name) as image:
            _, list_seconds, _ = measured(
                lambda: allocated_extents(image, size)
            )
            for depth in depths:
                runs = [
                    measured(lambda d=depth: digest_image(image, depth=d))
                    for _ in range(repeat)
                ]
                with tempfile.NamedTemporaryFile(
                    dir=scratch, prefix="bench-digest-", suffix=".raw"
                ) as copy:
                    sunk = measured(
                        lambda d=depth, c=copy: digest_image(
                            image, sink=c, depth=d
                        )
                    )
                    copy_bytes = os.fstat(copy.fileno()).st_blocks * 512
                digest = runs[0][0]
                best = min(r[1] for r in runs)
                median = statistics.median(r[1] for r in runs)
                peak = max(r[2] for r in runs)
                print(
                    f"{percent:5.0f}% {written:4d} {depth:5d} "
                    f"{rate(size, best):8.0f} "
                    f"{rate(digest.bytes_read, best):5.0f} "
                    f"{best:6.2f}/{median:.2f} {list_seconds * 1e3:6.1f}"
                    f" {peak / 1024:7.1f} |"
                    f" {rate(size, sunk[1]):7.0f}"
                    f" {rate(digest.bytes_read, sunk[1]):5.0f}"
                    f" {sunk[2] / 1024:7.1f} {copy_bytes / MIB:6.0f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--percent", default="0,1,10,50,100")
    parser.add_argument("--depths", default=f"1,{READ_DEPTH}")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--empty-gib", type=int, default=100)
    parser.add_argument("--scratch-dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    stack = localstack.load_stack()
    ceph_a = stack.ceph("a")
    readonly = stack.readonly_user
    size = int(args.size_gib * GIB)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; image {size / GIB:g} GiB, "
        f"{BLOCK_SIZE // MIB} MiB blocks; best of {args.repeat}; "
        f"copies in {args.scratch_dir}"
    )
    print(
        "             read  digest: MiB/s     seconds   list   peak RSS |"
        " with sink: MiB/s  peak RSS  copy"
    )
    print(
        " fill  blk  depth logical  read best/median  ms   +MiB     |"
        " logical  read   +MiB     MiB"
    )
    cluster = VolumeCluster(
        ceph_a.conf, readonly.user, [ceph_a.pool], readonly.keyring
    )
    try:
        with localstack.ioctx(stack, "a") as io:
            for percent in (float(p) for p in args.percent.split(",")):
                run_level(
                    io,
                    cluster,
                    size,
                    percent,
                    [int(d) for d in args.depths.split(",")],
                    args.repeat,
                    args.scratch_dir,
                )
            empty = args.empty_gib * GIB
            with bench_image(io, empty) as name:
                with cluster.open_named(name) as image:
                    digest, seconds, peak = measured(
                        lambda: digest_image(image)
                    )
            print(
                f"empty thin {args.empty_gib} GiB image: {seconds:.2f} s, "
                f"{digest.bytes_read} bytes read, "
                f"{rate(empty, seconds):,.0f} MiB/s logical, "
                f"peak RSS +{peak / 1024:.1f} MiB"
            )
    finally:
        cluster.close()
    print(
        f"process: RSS at the end {status_kib('VmRSS') / 1024:.0f} MiB, "
        f"high-water mark since the last reset "
        f"{status_kib('VmHWM') / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
