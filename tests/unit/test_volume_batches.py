"""Batches of whole volumes from a backup listing sorted by volume.

Expiry plans a batch while the rest of the listing is still to be read,
so a batch must hold every listed backup of each of its volumes: a
volume planned from part of its history would be planned again, or
wrongly, from the rest.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cinderbak.listing import volume_batches

Page = tuple[float, list[dict[str, Any]]]


def listed(counts: list[int]) -> list[dict[str, Any]]:
    """Backups of volumes v000, v001, ... (``counts[n]`` of volume n), in
    the order Cinder lists them for ``sort=volume_id:asc``."""
    return [
        {"id": f"b{n:03}-{k}", "volume_id": f"v{n:03}"}
        for n, count in enumerate(counts)
        for k in range(count)
    ]


def paged(items: list[dict[str, Any]], cuts: list[int]) -> list[Page]:
    """``items`` cut into pages at ``cuts``, page n asked for at time n."""
    bounds = [0, *sorted({c % (len(items) + 1) for c in cuts}), len(items)]
    return [
        (float(n), items[a:b])
        for n, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]


@given(
    counts=st.lists(st.integers(min_value=1, max_value=6), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12),
    size=st.integers(min_value=1, max_value=8),
)
def test_each_backup_comes_once_in_a_batch_of_whole_volumes(
    counts: list[int], cuts: list[int], size: int
) -> None:
    items = listed(counts)
    pages = paged(items, cuts)
    batches = list(volume_batches(pages, size))
    given_out = [i for _, batch in batches for b in batch.values() for i in b]
    assert sorted(b["id"] for b in given_out) == sorted(b["id"] for b in items)
    volumes = [v for _, batch in batches for v in batch]
    assert len(volumes) == len(set(volumes))  # a volume in one batch only
    for _, batch in batches[:-1]:
        assert len(batch) >= size
    for began, batch in batches:
        # Never later than the request of any page its backups came from.
        pages_of = [
            when
            for when, page in pages
            for item in page
            if item["volume_id"] in batch
        ]
        assert began == min(pages_of)


def test_a_volume_spread_over_pages_is_given_out_whole() -> None:
    items = listed([1, 5, 1])
    pages = [(0.0, items[:3]), (1.0, items[3:6]), (2.0, items[6:])]
    batches = list(volume_batches(pages, 1))
    # A batch is cut before the volume a page ends with.
    assert [sorted(batch) for _, batch in batches] == [
        ["v000"],
        ["v001"],
        ["v002"],
    ]
    assert len(batches[1][1]["v001"]) == 5
    assert [began for began, _ in batches] == [0.0, 0.0, 2.0]


def test_a_backup_of_a_volume_already_given_out_is_left_out() -> None:
    # A listing that started again (its marker deleted) yields only what
    # it had not yielded: a backup created meanwhile for a volume whose
    # batch is planned already comes after the rest.
    items = listed([2, 2, 2])
    late = {"id": "b000-new", "volume_id": "v000"}
    pages = [(0.0, items[:3]), (1.0, [*items[3:], late])]
    batches = list(volume_batches(pages, 1))
    ids = [b["id"] for _, batch in batches for v in batch.values() for b in v]
    assert "b000-new" not in ids
    assert sorted(ids) == sorted(b["id"] for b in items)


def test_an_empty_listing_gives_no_batch() -> None:
    assert list(volume_batches([(0.0, [])], 5)) == []
