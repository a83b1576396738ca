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

from openstack.block_storage.v3.volume import Volume

from cinderbak import tenant
from cinderbak.cloud import Cloud
from cinderbak.policy import Policy

PAGE_SIZE = 500


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


def _attachments(volume: Volume) -> tuple[Attachment, ...]:
    found = []
    for item in volume.attachments or ():
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
    volumes: Iterable[Volume], policies: Mapping[str, Policy]
) -> Iterator[Target | Problem]:
    """Given volumes as listed, yield a Target or a Problem for each opt-in.

    Volumes without ``cinderbak:policy`` (and no other of our keys) are
    skipped silently: they did not ask for anything.
    """
    for volume in volumes:
        metadata = dict(volume.metadata or {})
        project_id = volume.project_id or ""
        try:
            opt_in = tenant.parse_volume_metadata(
                volume.id, metadata, policies
            )
        except tenant.MetadataError as exc:
            yield Problem(
                volume.id, project_id, metadata.get(tenant.POLICY), str(exc)
            )
            continue
        if opt_in is None:
            continue
        policy = policies[opt_in.policy]
        yield target_of(volume, policy, opt_in.quiesce or policy.quiesce)


def target_of(
    volume: Volume, policy: Policy, quiesce: tenant.QuiesceMode
) -> Target:
    """Return the Target for a volume as the API listed it."""
    return Target(
        volume_id=volume.id,
        name=volume.name or "",
        project_id=volume.project_id or "",
        status=volume.status,
        size_gb=int(volume.size or 0),
        availability_zone=volume.availability_zone,
        policy=policy,
        quiesce=quiesce,
        attachments=_attachments(volume),
    )


SCRATCH_PREFIX = "cinderbak-verify-"


def is_scratch(volume: Volume, service_project_id: str) -> bool:
    """Whether a volume is a verification's scratch volume: never a target.

    A restore copies the source volume's metadata (its opt-in included)
    onto the scratch volume, so it is known by where it lives and what it
    is called: tenants cannot create volumes in the service project.
    """
    return (volume.project_id or "") == service_project_id and (
        volume.name or ""
    ).startswith(SCRATCH_PREFIX)


def volumes_of_policy(cloud: Cloud, policy: Policy) -> Iterator[Volume]:
    """Yield every volume, in every project, that names ``policy``."""
    # The SDK sends ``properties`` as Cinder's ``metadata`` filter; Cinder
    # parses it as a literal, so it must be a JSON string, not a dict.
    query = json.dumps({tenant.POLICY: policy.name})
    ours = cloud.service.current_project_id or ""
    for volume in cloud.service.block_storage.volumes(
        details=True, all_projects=True, properties=query, limit=PAGE_SIZE
    ):
        # Always v3 (block_storage_api_version); said for the type checker.
        if isinstance(volume, Volume) and not is_scratch(volume, ours):
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
        for volume in cloud.service.block_storage.volumes(
            details=True, all_projects=True, limit=PAGE_SIZE
        )
        if isinstance(volume, Volume)  # always v3, as volumes_of_policy
        and tenant.mentions_us(volume.metadata or {})
        and not is_scratch(volume, ours)
    )
    return [
        item
        for item in classify(volumes, policies)
        if isinstance(item, Problem) and item.policy not in policies
    ]
