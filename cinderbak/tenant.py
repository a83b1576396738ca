"""The tenant contract: what volume and backup metadata may say.

Tenants opt volumes in with ``cinderbak:policy`` and may tune quiescing
with ``cinderbak:quiesce``; the daemon writes ``cinderbak:last_backup`` and
``cinderbak:last_status`` back. Anything else under the ``cinderbak:``
prefix is a typo until proven otherwise, so it is reported, never guessed.

Pure: no I/O, so every rule is tested without a cloud.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping

PREFIX = "cinderbak:"

# Keys a tenant sets on a volume.
POLICY = PREFIX + "policy"
QUIESCE = PREFIX + "quiesce"
# Keys the daemon writes on a volume (when the operator enables it).
LAST_BACKUP = PREFIX + "last_backup"
LAST_STATUS = PREFIX + "last_status"
# Key a tenant sets on a backup.
HOLD = PREFIX + "hold"
# Keys the daemon writes on the backups and snapshots it creates.
OWNER = PREFIX + "owner"
RUN = PREFIX + "run"
CONSISTENCY = PREFIX + "consistency"
GROUP = PREFIX + "group"
# How many volumes the group's freeze covered: a restore point is complete
# only when that many backups carry the group id.
GROUP_SIZE = PREFIX + "group_size"
# What verification found, and the source checksum taken at backup time.
VERIFIED = PREFIX + "verified"
CHECKSUM = PREFIX + "checksum"

VOLUME_KEYS = frozenset({POLICY, QUIESCE, LAST_BACKUP, LAST_STATUS})
BACKUP_KEYS = frozenset(
    {
        HOLD,
        OWNER,
        POLICY,
        RUN,
        CONSISTENCY,
        GROUP,
        GROUP_SIZE,
        VERIFIED,
        CHECKSUM,
    }
)


class QuiesceMode(enum.StrEnum):
    """How hard to try for an application-consistent copy."""

    REQUIRED = "required"
    PREFERRED = "preferred"
    OFF = "off"


class MetadataError(ValueError):
    """Metadata that breaks the contract; names the resource and the key."""

    def __init__(
        self, resource_id: str, key: str, value: str, expected: str
    ) -> None:
        self.resource_id = resource_id
        self.key = key
        self.value = value
        self.expected = expected
        # A key with spaces or invisible characters is shown quoted, so
        # the operator sees what the tenant really wrote.
        shown = key if key == key.strip() and key.isprintable() else repr(key)
        super().__init__(
            f"volume {resource_id}: metadata {shown}={value!r} is invalid; "
            f"expected {expected}"
        )


@dataclasses.dataclass(frozen=True)
class OptIn:
    """A volume's validated request to be backed up."""

    volume_id: str
    policy: str
    quiesce: QuiesceMode | None  # None: the policy's default applies


def canonical_key(key: str) -> str | None:
    """Given a metadata key, return the key of ours it spells (case and
    whitespace aside), or None when it is not under our prefix.

    ``CinderBak:policy`` and ``" cinderbak:policy"`` return
    ``cinderbak:policy``: Cinder matches keys exactly, so such a key is
    reported, never silently ignored and never silently accepted.
    """
    folded = "".join(key.split()).casefold()
    return folded if folded.startswith(PREFIX) else None


def mentions_us(metadata: Mapping[str, str]) -> bool:
    """Whether any key is, or looks like, one of ours: the audit looks
    at exactly these volumes."""
    return any(canonical_key(key) is not None for key in metadata)


def is_exact(value: str) -> bool:
    """Whether a value has no surrounding whitespace (space, tab,
    newline, no-break space) and no invisible character."""
    return value == value.strip() and value.isprintable()


def parse_volume_metadata(
    volume_id: str,
    metadata: Mapping[str, str],
    known_policies: Collection[str],
) -> OptIn | None:
    """Given a volume's metadata, return its opt-in, or None if absent.

    Raise MetadataError for an unknown policy, a malformed value, or a
    ``cinderbak:`` key outside the contract.
    """
    for key, value in sorted(metadata.items()):
        canonical = canonical_key(key)
        if canonical is not None and canonical != key:
            raise MetadataError(
                volume_id,
                key,
                value,
                f"the key written exactly {canonical!r} (lower case, no "
                "spaces): Cinder matches keys exactly, so this one is "
                "ignored by every policy",
            )
        if key.startswith(PREFIX) and key not in VOLUME_KEYS:
            expected = (
                f"{HOLD} only on a backup, not on a volume"
                if key == HOLD
                else "one of " + ", ".join(sorted(VOLUME_KEYS))
            )
            raise MetadataError(volume_id, key, value, expected)
    if POLICY not in metadata:
        if QUIESCE in metadata:
            raise MetadataError(
                volume_id,
                QUIESCE,
                metadata[QUIESCE],
                f"to be set together with {POLICY}",
            )
        return None
    policy = metadata[POLICY]
    names = ", ".join(sorted(known_policies)) or "(none defined)"
    if not is_exact(policy):
        meant = "".join(ch for ch in policy.strip() if ch.isprintable())
        hint = f" ({meant!r})" if meant in known_policies else ""
        raise MetadataError(
            volume_id,
            POLICY,
            policy,
            f"exactly a policy name{hint}, without surrounding whitespace "
            "or invisible characters: Cinder matches the value exactly, so "
            f"this volume is never backed up; policies: {names}",
        )
    if policy not in known_policies:
        raise MetadataError(
            volume_id,
            POLICY,
            metadata[POLICY],
            f"the name of a policy this cloud offers: {names}",
        )
    quiesce = None
    if QUIESCE in metadata:
        quiesce = parse_quiesce_mode(volume_id, metadata[QUIESCE])
    return OptIn(volume_id=volume_id, policy=policy, quiesce=quiesce)


def parse_quiesce_mode(resource_id: str, value: str) -> QuiesceMode:
    """Return the quiesce mode ``value`` names, or raise MetadataError."""
    try:
        return QuiesceMode(value.strip().lower())
    except ValueError:
        choices = ", ".join(mode.value for mode in QuiesceMode)
        raise MetadataError(
            resource_id, QUIESCE, value, f"one of {choices}"
        ) from None


def is_held(backup_id: str, metadata: Mapping[str, str]) -> bool:
    """Return whether a backup is exempt from expiry.

    A value that is neither true nor false is treated as a hold: when a
    tenant's intent is unclear, keeping data is the safe side. The caller
    reports the MetadataError this raises and then keeps the backup.
    """
    value = metadata.get(HOLD)
    if value is None:
        return False
    normalised = value.strip().lower()
    if normalised in ("true", "yes", "1"):
        return True
    if normalised in ("false", "no", "0", ""):
        return False
    raise MetadataError(backup_id, HOLD, value, "true or false")


def is_ours(metadata: Mapping[str, str], deployment_id: str) -> bool:
    """Return whether a backup or snapshot carries this deployment's mark."""
    return metadata.get(OWNER) == deployment_id


def status_text(error: str | None) -> str:
    """Return the ``cinderbak:last_status`` value for an outcome.

    Cinder caps metadata values at 255 characters.
    """
    if error is None:
        return "ok"
    text = "error: " + " ".join(error.split())
    return text if len(text) <= 255 else text[:252] + "..."
