"""Paged Block Storage listings read as plain decoded JSON.

The engine reads backups and snapshots in bulk (a project's whole history
once per run, a run's resources once per poll). openstacksdk would build
a resource object per item (hundreds of microseconds each, most of a
large run's CPU) and, without a limit it knows, ask for one more, empty
page after the last. Here each page is one GET through the same
keystoneauth session, items stay dicts, and paging stops at the first
page shorter than the limit or without a ``next`` link.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import openstack.connection
from openstack import exceptions as sdk_exceptions

from cinderbak.cloud import Cloud

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
    answer (``backups``). Each page is retried like any read.
    """
    marker: str | None = None
    while True:
        query = {**(params or {}), "limit": limit}
        if marker is not None:
            query["marker"] = marker
        body = cloud.call(_get, conn, path, query)
        items = body.get(key) or []
        yield from items
        if len(items) < limit or not body.get(f"{key}_links"):
            return
        marker = items[-1]["id"]


def _get(
    conn: openstack.connection.Connection,
    path: str,
    query: Mapping[str, Any],
) -> dict[str, Any]:
    response = conn.block_storage.get(
        path, params=dict(query), microversion=MICROVERSION
    )
    sdk_exceptions.raise_from_response(response)
    body: dict[str, Any] = response.json()
    return body


def run_resources(
    cloud: Cloud, kind: str, name: str
) -> dict[str, dict[str, Any]]:
    """Every backup or snapshot (``kind``) named ``name``, any project, by
    id: one listing gives a whole run's statuses, sizes and marks."""
    return {
        item["id"]: item
        for item in pages(
            cloud,
            cloud.service,
            f"/{kind}/detail",
            kind,
            {"all_tenants": 1, "name": name},
        )
    }


def backup_services(cloud: Cloud) -> list[dict[str, Any]]:
    """The ``cinder-backup`` services as ``os-services`` lists them."""
    body = cloud.call(
        _get, cloud.service, "/os-services", {"binary": "cinder-backup"}
    )
    services: list[dict[str, Any]] = body.get("services") or []
    return services
