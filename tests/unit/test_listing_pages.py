"""Paging through Cinder listings: when another page follows.

Cinder (``cinder.api.common``) caps a page at ``osapi_max_limit`` whatever
``limit`` is asked for, and adds a ``next`` link exactly when a page holds
as many items as that capped limit. The bodies here are built by that rule.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cinderbak.listing import MARKER_RESTARTS, marker_gone, next_marker


def cinder_page(
    items: list[str], marker: str | None, asked: int, cap: int
) -> dict[str, Any]:
    """The body Cinder answers for ``?limit=asked&marker=marker``."""
    start = 0 if marker is None else items.index(marker) + 1
    limit = min(asked, cap)
    page = [{"id": i} for i in items[start : start + limit]]
    body: dict[str, Any] = {"backups": page}
    if page and limit <= len(page):
        body["backups_links"] = [{"rel": "next", "href": "..."}]
    return body


def test_a_full_page_under_a_lower_cap_is_not_the_last() -> None:
    # Asked 1,000, the region's cap is 500: a full page is 500 long.
    items = [f"b{n}" for n in range(501)]
    first = cinder_page(items, None, 1000, 500)
    assert len(first["backups"]) == 500
    assert next_marker(first, "backups") == "b499"


def test_a_page_without_a_next_link_is_the_last() -> None:
    body = cinder_page(["a", "b"], None, 1000, 1000)
    assert next_marker(body, "backups") is None


def test_an_empty_page_ends_the_listing_even_with_a_link() -> None:
    body = {"backups": [], "backups_links": [{"rel": "next"}]}
    assert next_marker(body, "backups") is None


def test_a_body_without_the_list_ends_the_listing() -> None:
    assert next_marker({}, "backups") is None


@given(
    count=st.integers(min_value=0, max_value=60),
    asked=st.integers(min_value=1, max_value=25),
    cap=st.integers(min_value=1, max_value=25),
)
def test_paging_reads_every_item_once(
    count: int, asked: int, cap: int
) -> None:
    items = [f"id-{n}" for n in range(count)]
    seen: list[str] = []
    marker: str | None = None
    for _ in range(count + 2):  # one page per item at most, and an empty one
        body = cinder_page(items, marker, asked, cap)
        seen += [item["id"] for item in body["backups"]]
        marker = next_marker(body, "backups")
        if marker is None:
            break
    assert seen == items
    assert marker is None


def test_a_page_after_a_deleted_marker_starts_the_listing_again() -> None:
    assert marker_gone("b499", 404, restarts=0)
    assert marker_gone("b499", 400, restarts=MARKER_RESTARTS - 1)


def test_the_first_page_failing_is_the_listings_own_error() -> None:
    assert not marker_gone(None, 404, restarts=0)


def test_other_failures_and_endless_restarts_are_not_marker_gone() -> None:
    assert not marker_gone("b499", 500, restarts=0)
    assert not marker_gone("b499", 403, restarts=0)
    assert not marker_gone("b499", None, restarts=0)
    assert not marker_gone("b499", 404, restarts=MARKER_RESTARTS)
