"""Finding the volumes tenants opted in, and what is wrong with the rest.

Cinder filters volumes by metadata server-side, but only on a key *and*
its value. So each policy asks for its own volumes (one paged query per
policy, cheap at any scale), and a separate audit pages through all
volumes to find opt-ins that name no policy or break the contract. The
audit is the expensive one; the daemon runs it rarely.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from openstack.block_storage.v3.volume import Volume

from cinderbak import listing, tenant
from cinderbak.cloud import Cloud
from cinderbak.policy import Policy


@dataclasses.dataclass(frozen=True)
class Attachment:
    server_id: str
    host: str | None


@dataclasses.dataclass(frozen=True)
class Target:
    """An opted-in volume with what a run needs to know about it."""

    volume_id: str
    name: str
    project_id: str
    status: str
    size_gb: int
    availability_zone: str | None
    policy: Policy
    quiesce: tenant.QuiesceMode
    attachments: tuple[Attachment, ...]

    @property
    def in_use(self) -> bool:
        return bool(self.attachments) or self.status == "in-use"


@dataclasses.dataclass(frozen=True)
class Problem:
    """A volume that asked for backups but cannot have them as it asks."""

    volume_id: str
    project_id: str
    policy: str | None
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    """The fields of a volume discovery reads, from either shape: a
    volume as the paged listing decodes it (the API's JSON keys) or an
    SDK Volume (a single ``get_volume``, e.g. in recovery)."""

    id: str
    name: str
    project_id: str
    status: str
    size: int
    availability_zone: str | None
    metadata: Mapping[str, str]
    attachments: tuple[Mapping[str, Any], ...]


TENANT_KEY = "os-vol-tenant-attr:tenant_id"
"""Where the volume listing says which project a volume is in."""


def listed(volume: Volume | Mapping[str, Any]) -> Listed:
    """Return a volume's fields, whichever shape it was read in."""
    if isinstance(volume, Volume) or not isinstance(volume, Mapping):
        return Listed(
            id=volume.id,
            name=volume.name or "",
            project_id=volume.project_id or "",
            status=volume.status,
            size=int(volume.size or 0),
            availability_zone=volume.availability_zone,
            metadata=dict(volume.metadata or {}),
            attachments=tuple(volume.attachments or ()),
        )
    return Listed(
        id=volume["id"],
        name=volume.get("name") or "",
        project_id=volume.get(TENANT_KEY) or volume.get("project_id") or "",
        status=volume.get("status") or "",
        size=int(volume.get("size") or 0),
        availability_zone=volume.get("availability_zone"),
        metadata=volume.get("metadata") or {},
        attachments=tuple(volume.get("attachments") or ()),
    )


def _attachments(volume: Listed) -> tuple[Attachment, ...]:
    found = []
    for item in volume.attachments:
        server_id = item.get("server_id")
        if server_id:
            found.append(
                Attachment(
                    server_id=server_id,
                    host=item.get("host_name") or item.get("attached_host"),
                )
            )
    return tuple(found)


def classify(
    volumes: Iterable[Volume | Mapping[str, Any]],
    policies: Mapping[str, Policy],
) -> Iterator[Target | Problem]:
    """Given volumes as listed, yield a Target or a Problem for each opt-in.

    Volumes without ``cinderbak:policy`` (and no other of our keys) are
    skipped silently: they did not ask for anything.
    """
    for item in volumes:
        volume = listed(item)
        metadata = dict(volume.metadata)
        try:
            opt_in = tenant.parse_volume_metadata(
                volume.id, metadata, policies
            )
        except tenant.MetadataError as exc:
            yield Problem(
                volume.id,
                volume.project_id,
                metadata.get(tenant.POLICY),
                str(exc),
            )
            continue
        if opt_in is None:
            continue
        policy = policies[opt_in.policy]
        yield target_of(volume, policy, opt_in.quiesce or policy.quiesce)


def target_of(
    volume: Volume | Mapping[str, Any] | Listed,
    policy: Policy,
    quiesce: tenant.QuiesceMode,
) -> Target:
    """Return the Target for a volume as the API listed it."""
    fields = volume if isinstance(volume, Listed) else listed(volume)
    return Target(
        volume_id=fields.id,
        name=fields.name,
        project_id=fields.project_id,
        status=fields.status,
        size_gb=fields.size,
        availability_zone=fields.availability_zone,
        policy=policy,
        quiesce=quiesce,
        attachments=_attachments(fields),
    )


@dataclasses.dataclass(frozen=True)
class FreezeGroup:
    """What a run starts as one unit: the volumes of one server under one
    policy (one freeze covers them all), or one detached volume. It is
    also the unit of ownership when several daemons share a region."""

    project_id: str
    server_id: str | None
    targets: tuple[Target, ...]


def freeze_key(target: Target) -> tuple[str, str] | None:
    """Volumes of one server under one policy share a freeze."""
    if not target.attachments:
        return None
    return (target.project_id, target.attachments[0].server_id)


def freeze_groups(targets: Iterable[Target]) -> list[FreezeGroup]:
    """Group a run's targets into freeze groups, the one place where that
    happens: projects in first-seen order, and within a project each
    server's group (first-seen order) before its detached volumes."""
    servers: dict[tuple[str, str], list[Target]] = {}
    detached: dict[str, list[Target]] = {}
    projects: dict[str, None] = {}
    for target in targets:
        projects.setdefault(target.project_id)
        key = freeze_key(target)
        if key is None:
            detached.setdefault(target.project_id, []).append(target)
        else:
            servers.setdefault(key, []).append(target)
    by_project: dict[str, list[FreezeGroup]] = {p: [] for p in projects}
    for (project, server), members in servers.items():
        by_project[project].append(
            FreezeGroup(project, server, tuple(members))
        )
    for project, members in detached.items():
        by_project[project].extend(
            FreezeGroup(project, None, (target,)) for target in members
        )
    return [group for groups in by_project.values() for group in groups]


SCRATCH_PREFIX = "cinderbak-verify-"


def is_scratch(
    volume: Volume | Mapping[str, Any], service_project_id: str
) -> bool:
    """Whether a volume is a verification's scratch volume: never a target.

    A restore copies the source volume's metadata (its opt-in included)
    onto the scratch volume, so it is known by where it lives and what it
    is called: tenants cannot create volumes in the service project.
    """
    fields = listed(volume)
    return fields.project_id == service_project_id and fields.name.startswith(
        SCRATCH_PREFIX
    )


def volumes_of_policy(
    cloud: Cloud, policy: Policy
) -> Iterator[dict[str, Any]]:
    """Yield every volume, in every project, that names ``policy``, as
    listed: plain decoded JSON, page by page (see :mod:`listing` for why
    not SDK objects)."""
    # Cinder parses the ``metadata`` filter as a literal, so it is sent
    # as a JSON string, not a dict.
    query = json.dumps({tenant.POLICY: policy.name})
    ours = cloud.service.current_project_id or ""
    for volume in listing.volumes(cloud, {"metadata": query}):
        if not is_scratch(volume, ours):
            yield volume


def discover(
    cloud: Cloud, policies: Mapping[str, Policy], names: Iterable[str]
) -> list[Target | Problem]:
    """Return the targets (and problems) of the named policies."""
    found: list[Target | Problem] = []
    for name in names:
        found.extend(
            classify(volumes_of_policy(cloud, policies[name]), policies)
        )
    return found


def audit(cloud: Cloud, policies: Mapping[str, Policy]) -> list[Problem]:
    """Page through all volumes; return opt-ins that no policy can serve.

    Volumes of a known policy with bad metadata are reported by their
    policy's own run, so only the rest are returned here. Cinder's filter
    matches the exact value, so a value with surrounding whitespace
    (``"daily "``) or a key spelled another way (``CinderBak:policy``)
    reaches no policy's run: the audit reports those too.
    """
    ours = cloud.service.current_project_id or ""
    volumes = (
        volume
        for volume in listing.volumes(cloud)
        if tenant.mentions_us(volume.get("metadata") or {})
        and not is_scratch(volume, ours)
    )
    return [
        item
        for item in classify(volumes, policies)
        if isinstance(item, Problem) and item.policy not in policies
    ]
