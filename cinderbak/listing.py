"""Paged Block Storage listings read as plain decoded JSON.

Everything that feeds planning is read in bulk: the volumes of a policy
(discovery), a project's whole backup history (once per run and per
expiry pass), a run's backups and snapshots (once per poll). openstacksdk
would build a resource object per item: about 460 us each, measured on a
listed backup, against 0.5 us to read the same fields from the decoded
JSON; at 10,000 volumes with 10 backups each that was 90% of a plan's 72
CPU seconds, and the objects held whole were most of its memory. Without
a limit it knows, the SDK also asks for one more, empty page after the
last. So here each page is one GET through the same keystoneauth session
(same token, retries and microversion as every other call), items stay
dicts, they are yielded page by page (a caller that streams holds one
page), and paging follows Cinder's ``next`` links (:func:`next_marker`).
Answers are decoded by :func:`cinderbak.answers.decoded`. One backup
read by id (:func:`backup`) comes back in the same shape as a listed
one, so both are checked by the same code. Creates are plain JSON as
well (:mod:`cinderbak.creating`); deletes keep going through the SDK:
there the object costs nothing that matters.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import openstack.connection
from openstack import exceptions as sdk_exceptions
from oslo_log import log as logging

from cinderbak import answers
from cinderbak.cloud import Cloud

LOG = logging.getLogger(__name__)

PAGE_SIZE = 1000
MICROVERSION = "3.43"
"""Backup metadata (our marks) is listed from 3.43 on."""


def pages(
    cloud: Cloud,
    conn: openstack.connection.Connection,
    path: str,
    key: str,
    params: Mapping[str, Any] | None = None,
    *,
    limit: int = PAGE_SIZE,
) -> Iterator[dict[str, Any]]:
    """Yield every item of a Block Storage listing, page by page.

    ``path`` is e.g. ``/backups/detail``, ``key`` the list's name in the
    answer (``backups``). See :func:`page_lists`.
    """
    for page in page_lists(cloud, conn, path, key, params, limit=limit):
        yield from page


def page_lists(
    cloud: Cloud,
    conn: openstack.connection.Connection,
    path: str,
    key: str,
    params: Mapping[str, Any] | None = None,
    *,
    limit: int = PAGE_SIZE,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the items of a Block Storage listing, one list per page,
    each page requested only when the one before has been taken.

    Each page is retried like any read; :func:`next_marker` says whether
    another follows. When the item a page starts after was deleted
    meanwhile (:func:`marker_gone`), the listing starts again and yields
    only items not yielded before.
    """
    marker: str | None = None
    seen: set[str] = set()
    restarts = 0
    while True:
        query = {**(params or {}), "limit": limit}
        if marker is not None:
            query["marker"] = marker
        try:
            body = cloud.call(_get, cloud, conn, path, query)
        except sdk_exceptions.HttpException as exc:
            if not marker_gone(marker, exc.status_code, restarts):
                raise
            LOG.info(
                "listing %s: the page marker %s is gone (deleted while we "
                "paged); listing again from the start, skipping the %d "
                "items already read",
                path,
                marker,
                len(seen),
            )
            restarts += 1
            marker = None
            continue
        page = []
        for item in body.get(key) or []:
            if item["id"] not in seen:
                seen.add(item["id"])
                page.append(item)
        yield page
        marker = next_marker(body, key)
        if marker is None:
            return


MARKER_RESTARTS = 3
"""How often one listing starts again after its marker was deleted."""


def marker_gone(marker: str | None, status: int | None, restarts: int) -> bool:
    """Whether a failed page asked after an item that no longer exists,
    so that the listing should start again (at most MARKER_RESTARTS
    times).

    Cinder looks the marker up before it pages: a backup or volume
    deleted between two pages fails the next with 404 (an API that calls
    an unknown marker a bad request answers 400), and expiry deletes
    exactly the oldest backups, which end each page. The first page has
    no marker: a 404 there is the listing's own.
    """
    return (
        marker is not None
        and status in (400, 404)
        and restarts < MARKER_RESTARTS
    )


def next_marker(body: Mapping[str, Any], key: str) -> str | None:
    """The marker that asks for the page after ``body``, or None if it is
    the last.

    Cinder caps every page at its ``osapi_max_limit`` whatever ``limit``
    is asked for, and links a next page exactly when a page is as long
    as that cap. So the link decides, never the page's length against
    the limit asked: a region whose cap is below ours (say 500 against
    our 1,000) answers full pages that are shorter than asked, and
    stopping there would miss every volume or backup after the first
    page. A page without items ends the listing whatever it links (a
    marker would not move).
    """
    items = body.get(key) or []
    if not items or not body.get(f"{key}_links"):
        return None
    return str(items[-1]["id"])


def _get(
    cloud: Cloud,
    conn: openstack.connection.Connection,
    path: str,
    query: Mapping[str, Any],
) -> dict[str, Any]:
    response = cloud.reader(conn).get(
        path, params=dict(query), microversion=MICROVERSION, raise_exc=False
    )
    return answers.decoded(response)


def run_resources(
    cloud: Cloud, kind: str, name: str, *, status: str | None = None
) -> dict[str, dict[str, Any]]:
    """Every backup or snapshot (``kind``) named ``name``, any project, by
    id: one listing gives a whole run's statuses, sizes and marks.
    ``status`` narrows it to the ones in that status."""
    params: dict[str, Any] = {"all_tenants": 1, "name": name}
    if status is not None:
        params["status"] = status
    return {
        item["id"]: item
        for item in pages(
            cloud, cloud.service, f"/{kind}/detail", kind, params
        )
    }


def project_backups(
    cloud: Cloud,
    project_id: str,
    params: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every backup of ``project_id`` (matching ``params``), as listed.

    Read with the service user's token, as an admin may: ``all_tenants``
    with the project as a column filter (Cinder lets an admin filter a
    listing on any column). Discovery and the run listings already read
    the whole region that way. A token scoped to each project, only to
    read, cost a Keystone request and about 6 ms of CPU per project: a
    fifth of planning a region of 500 projects, and a request per project
    and pass of expiry. Writes in a project (creates, deletions) still act
    with its own token (:meth:`cinderbak.cloud.Cloud.for_project`).
    """
    return pages(
        cloud,
        cloud.service,
        "/backups/detail",
        "backups",
        {"all_tenants": 1, **(params or {}), "project_id": project_id},
    )


BATCH_VOLUMES = 250
"""Whole volumes per batch of :func:`backups_by_volume`: about 2,500
backups held at a time with 10 each, against a region's whole history
(100,000 backups, over 100 MB, in the service project at 10,000
volumes)."""


def backups_by_volume(
    cloud: Cloud, project_id: str, *, size: int = BATCH_VOLUMES
) -> Iterator[tuple[float, dict[str, list[dict[str, Any]]]]]:
    """Every backup of ``project_id`` as listed, in batches of whole
    volumes (:func:`volume_batches`), each with when (``time.monotonic``)
    its first page was requested.

    The listing is sorted by volume (``sort=volume_id:asc``: Cinder sorts
    a list on any column of its table, and adds ``created_at`` and ``id``
    after the keys given), so a volume's backups arrive together and a
    batch can be planned while the rest is still to be read.
    """
    listed = page_lists(
        cloud,
        cloud.service,
        "/backups/detail",
        "backups",
        {"all_tenants": 1, "project_id": project_id, "sort": "volume_id:asc"},
    )
    return volume_batches(_timed(listed), size)


def _timed(
    lists: Iterator[list[dict[str, Any]]],
) -> Iterator[tuple[float, list[dict[str, Any]]]]:
    """Each page with the time right before it was asked for (the pages
    are requested lazily, as they are taken)."""
    while True:
        requested = time.monotonic()
        page = next(lists, None)
        if page is None:
            return
        yield requested, page


def volume_batches(
    pages: Iterable[tuple[float, list[dict[str, Any]]]], size: int
) -> Iterator[tuple[float, dict[str, list[dict[str, Any]]]]]:
    """Group the pages of a backup listing sorted by volume into batches
    of whole volumes: at least ``size`` volumes each (the last may hold
    fewer), with the request time of the earliest page any of its
    backups came from.

    A batch is cut at a page's end, before the page's last volume, whose
    backups may go on in the next page. A backup of a volume whose batch
    was already given out (created while we paged, and read when a
    listing started again after its marker was deleted) is left out, and
    counted: that volume is planned as it was listed, and the backup is
    seen by the next listing. Planning never deletes more for a backup it
    did not see.
    """
    batch: dict[str, list[dict[str, Any]]] = {}
    first_seen: dict[str, float] = {}
    given: set[str] = set()
    tail = ""
    late = 0
    for requested, page in pages:
        for item in page:
            volume_id = item.get("volume_id") or ""
            if volume_id in given:
                late += 1
                continue
            first_seen.setdefault(volume_id, requested)
            batch.setdefault(volume_id, []).append(item)
            tail = volume_id
        if len(batch) > size:
            kept = batch.pop(tail)
            yield min(first_seen[v] for v in batch), batch
            given.update(batch)
            batch, first_seen = {tail: kept}, {tail: first_seen[tail]}
    if late:
        LOG.warning(
            "%d backups were listed after their volume's other backups had "
            "been planned (created while the listing was read, or the "
            "listing was not sorted by volume); the next listing sees them",
            late,
        )
    if batch:
        yield min(first_seen.values()), batch


def run_backups(
    cloud: Cloud, name: str, ids: Collection[str]
) -> dict[str, dict[str, Any]]:
    """The run ``name``'s backups with these ``ids`` as Cinder has them
    now, by id; an id missing from the answer is gone from Cinder.

    Listing the whole run on every poll read every finished backup again
    and again: O(run) per poll, at 10,000 volumes about half of the
    run's CPU. The cost here follows what is in flight instead:

    1. the run's backups still ``creating``, one listing (most polls end
       here: nothing waited on has moved);
    2. for the ones waited on that left ``creating``: the run's backups
       most recently updated first (``sort=updated_at:desc``; Cinder's
       backup list takes ``sort`` like every list, and a status change
       updates ``updated_at``), paged only until each of them is seen;
    3. one GET per id still not seen (deleted, or moved again while we
       paged), so that "gone" is Cinder's 404, not an absence from a
       listing that was racing with updates.
    """
    wanted = set(ids)
    creating = run_resources(cloud, "backups", name, status="creating")
    found = {i: creating[i] for i in wanted & creating.keys()}
    moved = wanted - found.keys()
    if moved:
        limit = min(PAGE_SIZE, len(moved) + len(creating) + 20)
        for item in pages(
            cloud,
            cloud.service,
            "/backups/detail",
            "backups",
            {"all_tenants": 1, "name": name, "sort": "updated_at:desc"},
            limit=limit,
        ):
            if item["id"] in moved:
                found[item["id"]] = item
                if len(found) == len(wanted):
                    break
    for backup_id in wanted - found.keys():
        single = backup(cloud, backup_id)
        if single is not None:
            found[backup_id] = single
    return found


def backup(cloud: Cloud, backup_id: str) -> dict[str, Any] | None:
    """One backup (any project) as Cinder has it, or None if it has none
    by that id."""
    try:
        body = cloud.call(
            _get, cloud, cloud.service, f"/backups/{backup_id}", {}
        )
    except sdk_exceptions.NotFoundException:
        return None
    item: dict[str, Any] = body["backup"]
    return item


def volumes(
    cloud: Cloud,
    params: Mapping[str, Any] | None = None,
    *,
    limit: int = PAGE_SIZE,
) -> Iterator[dict[str, Any]]:
    """Every volume (any project) matching ``params``, as listed."""
    return pages(
        cloud,
        cloud.service,
        "/volumes/detail",
        "volumes",
        {"all_tenants": 1, **(params or {})},
        limit=limit,
    )


def ids_in_status(cloud: Cloud, kind: str, status: str) -> set[str]:
    """Ids of every backup or snapshot (``kind``, any project) in
    ``status``: one shared listing whatever the number asked about."""
    return {
        item["id"]
        for item in pages(
            cloud,
            cloud.service,
            f"/{kind}",
            kind,
            {"all_tenants": 1, "status": status},
        )
    }


def in_status(
    cloud: Cloud, kind: str, status: str
) -> dict[str, dict[str, Any]]:
    """Every backup or snapshot (any project) in ``status``, by id, with
    its details (``fail_reason`` of a failed deletion)."""
    return {
        item["id"]: item
        for item in pages(
            cloud,
            cloud.service,
            f"/{kind}/detail",
            kind,
            {"all_tenants": 1, "status": status},
        )
    }


def backup_services(cloud: Cloud) -> list[dict[str, Any]]:
    """The ``cinder-backup`` services as ``os-services`` lists them."""
    body = cloud.call(
        _get, cloud, cloud.service, "/os-services", {"binary": "cinder-backup"}
    )
    services: list[dict[str, Any]] = body.get("services") or []
    return services
