"""A run's create requests and quota reads as plain decoded JSON.

A run asks Cinder for one backup (and, in snapshot mode, one temporary
snapshot) per volume, and reads each owner project's quota once. Through
openstacksdk each of those built a resource object from the request and
again from the answer: measured at 1,000 volumes against
``bench/simcloud.py``, ``create_backup`` cost about 10 ms of CPU per
backup (``Resource._attributes_iterator`` walking the class for every
attribute), more than everything else a backup needs together, and the
first use of a project connection's Block Storage proxy another 15 ms per
project. The engine reads one field of the answer (the id). So the
request goes through the same keystoneauth session as every other call
(same token, project scope, microversion header, metrics hook), via the
per-connection adapter of :meth:`cinderbak.cloud.Cloud.reader`, and the
answer stays a dict. Errors are raised as openstacksdk's, so the retry
rules of :mod:`cinderbak.cloud` apply unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import openstack.connection

from cinderbak import answers, listing, tenant
from cinderbak.backups import Quota
from cinderbak.cloud import Cloud

BASE_MICROVERSION = "3.43"
"""Backup metadata (our marks) from 3.43 on: the least cinderbak needs."""
ZONE_MICROVERSION = "3.51"
"""A backup's ``availability_zone`` is accepted on create from 3.51 on."""


def create_body(kind: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Given ``backup`` or ``snapshot`` and the engine's attributes (the
    SDK's names), return the JSON body Cinder expects: a backup's
    ``is_incremental`` is ``incremental`` on create."""
    fields = dict(attrs)
    if kind == "backup" and "is_incremental" in fields:
        fields["incremental"] = bool(fields.pop("is_incremental"))
    return {kind: fields}


def microversion_for(kind: str, attrs: Mapping[str, Any]) -> str:
    """The microversion a create needs for what it asks."""
    if kind == "backup" and attrs.get("availability_zone"):
        return ZONE_MICROVERSION
    return BASE_MICROVERSION


def create(
    cloud: Cloud,
    conn: openstack.connection.Connection,
    kind: str,
    **attrs: Any,
) -> dict[str, Any]:
    """POST one backup or snapshot (``kind``) as ``conn``'s project; return
    the created item as Cinder answered it. One attempt: the caller
    (:meth:`Cloud.create`) decides about retries and adoption."""
    response = cloud.reader(conn).post(
        f"/{kind}s",
        json=create_body(kind, attrs),
        microversion=microversion_for(kind, attrs),
        raise_exc=False,
    )
    item: dict[str, Any] = answers.decoded(response)[kind]
    return item


def find_created(
    cloud: Cloud,
    conn: openstack.connection.Connection,
    kind: str,
    *,
    volume_id: str,
    name: str,
    deployment_id: str,
) -> dict[str, Any] | None:
    """What a create of this run made on this volume, if anything: the
    run's name and our owner mark identify it (one per volume and run)."""
    for item in listing.pages(
        cloud,
        conn,
        f"/{kind}s/detail",
        f"{kind}s",
        {"volume_id": volume_id, "name": name},
    ):
        if tenant.is_ours(item.get("metadata") or {}, deployment_id):
            return item
    return None


def quota(cloud: Cloud, project_id: str) -> Quota:
    """One project's backup quota and usage, read as the service user."""
    body = cloud.call(_get_quota, cloud, project_id)
    return Quota.from_api(body.get("quota_set") or {})


def _get_quota(cloud: Cloud, project_id: str) -> dict[str, Any]:
    response = cloud.reader(cloud.service).get(
        f"/os-quota-sets/{project_id}",
        params={"usage": "True"},
        microversion=BASE_MICROVERSION,
        raise_exc=False,
    )
    return answers.decoded(response)
