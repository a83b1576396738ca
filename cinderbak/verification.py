"""What verification picks and what it concludes: pure, no I/O.

A verification restores a backup to a scratch volume and compares the
restored image with the checksum of the backup's source taken at backup
time, then checks the filesystem on it. This module chooses which backups
a pass verifies, reads and writes the marks kept on backups
(``cinderbak:checksum``, ``cinderbak:verified``), and turns what was found
into a verdict.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Iterable, Mapping

from cinderbak.policy import Sample

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Cinder caps a metadata value at 255 characters.
MAX_MARK = 255


class Result(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"  # restorable, but something deserves a look
    FAILED = "failed"  # content differs, filesystem damaged, or no restore


class Content(enum.StrEnum):
    MATCH = "match"
    MISMATCH = "MISMATCH"
    NO_CHECKSUM = "no-checksum"  # nothing recorded at backup time
    NOT_READ = "not-read"  # the restore failed before anything was read


@dataclasses.dataclass(frozen=True)
class SourceChecksum:
    """A checksum of what a backup copied, taken when it was made."""

    algorithm: str
    size: int  # bytes covered
    hexdigest: str

    def mark(self) -> str:
        return f"{self.algorithm}:{self.size}:{self.hexdigest}"


def parse_checksum(value: str | None) -> SourceChecksum | None:
    """Read a ``cinderbak:checksum`` mark; None when absent.

    Raise ValueError naming the expected form when it is malformed (a
    tenant may edit the metadata of the backups they own).
    """
    if not value:
        return None
    parts = value.split(":")
    if (
        len(parts) != 3
        or not parts[0]
        or not parts[1].isdigit()
        or not parts[2]
        or any(c not in "0123456789abcdef" for c in parts[2])
    ):
        raise ValueError(
            f"cinderbak:checksum {value!r} is not "
            "'<algorithm>:<bytes>:<lowercase hex digest>'"
        )
    return SourceChecksum(parts[0], int(parts[1]), parts[2])


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one verification concluded."""

    result: Result
    content: Content
    filesystem: str  # clean, needs-recovery, errors, not-checked
    at: datetime.datetime
    problems: tuple[str, ...] = ()

    def mark(self) -> str:
        """The ``cinderbak:verified`` value: result and time first, so a
        tenant reading it sees the answer at a glance."""
        text = (
            f"{self.result} {self.at:{TIME_FORMAT}} "
            f"content={self.content} fs={self.filesystem}"
        )
        if self.problems:
            text += ": " + "; ".join(self.problems)
        return text[:MAX_MARK]


@dataclasses.dataclass(frozen=True)
class LastVerified:
    result: str
    at: datetime.datetime


def parse_verified(value: str | None) -> LastVerified | None:
    """Read a ``cinderbak:verified`` mark; None when absent or unreadable
    (an unreadable mark counts as never verified, so it is redone)."""
    if not value:
        return None
    fields = value.split(" ", 2)
    if len(fields) < 2 or fields[0] not in set(Result):
        return None
    try:
        at = datetime.datetime.strptime(fields[1], TIME_FORMAT)
    except ValueError:
        return None
    return LastVerified(fields[0], at.replace(tzinfo=datetime.UTC))


def judge(
    *,
    expected: SourceChecksum | None,
    restored_hexdigest: str | None,
    restored_algorithm: str | None,
    filesystem: str,
    filesystem_summary: str,
    consistency: str,
    at: datetime.datetime,
    trusted: bool = True,
) -> Verdict:
    """Given what was recorded at backup time and what the restore gave,
    return the verdict.

    A checksum mismatch or a damaged filesystem fails. A journal that
    needs replaying is expected of a crash-consistent copy and noted; on
    a copy marked quiesced it means the freeze did not hold, a warning.
    ``trusted`` is False when ``expected`` comes from the backup's
    ``cinderbak:checksum`` mark only (no journal record): a tenant may
    have edited it, so the comparison can warn but not fail.
    """
    problems: list[str] = []
    if expected is not None and not trusted:
        problems.append(
            "expected checksum taken from the backup's cinderbak:checksum "
            "mark, which the journal does not back (tenants can edit it)"
        )
    if restored_hexdigest is None:
        content = Content.NOT_READ
    elif expected is None:
        content = Content.NO_CHECKSUM
        problems.append("no source checksum was recorded at backup time")
    elif expected.algorithm != restored_algorithm:
        content = Content.NO_CHECKSUM
        problems.append(
            f"recorded checksum uses {expected.algorithm}, this version "
            f"computes {restored_algorithm}"
        )
    elif expected.hexdigest == restored_hexdigest:
        content = Content.MATCH
    else:
        content = Content.MISMATCH
        problems.append(
            "restored content differs from the source checksummed at "
            "backup time"
        )
    if filesystem == "errors":
        problems.append(f"filesystem check: {filesystem_summary}")
    elif filesystem == "needs-recovery" and consistency == "quiesced":
        problems.append(
            "backup marked quiesced but its journal needs recovery"
        )
    failing = (
        (Content.MISMATCH, Content.NOT_READ)
        if trusted
        else (Content.NOT_READ,)
    )
    if content in failing or filesystem == "errors":
        result = Result.FAILED
    elif problems:
        result = Result.WARNING
    else:
        result = Result.OK
    return Verdict(result, content, filesystem, at, tuple(problems))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A backup a verification pass may pick."""

    backup_id: str
    volume_id: str
    created_at: datetime.datetime
    status: str
    last_verified: LastVerified | None = None


def choose(candidates: Iterable[Candidate], sample: Sample) -> list[Candidate]:
    """Pick the backups one pass verifies.

    Only available backups are eligible (a restoring or deleting one is
    busy). Never-verified backups come first, oldest first: an old backup
    nobody restored is the likeliest surprise. Once all were verified,
    those verified longest ago come next.
    """
    eligible = [c for c in candidates if c.status == "available"]

    def order(c: Candidate) -> tuple[object, ...]:
        if c.last_verified is None:
            return (0, c.created_at)
        return (1, c.last_verified.at, c.created_at)

    eligible.sort(key=order)
    return eligible[: sample.size(len(eligible))]


def last_verifications(
    backup_ids: Iterable[str],
    recorded: Mapping[str, LastVerified],
    marks: Mapping[str, str | None],
    *,
    journal_knows_policy: bool,
) -> dict[str, LastVerified | None]:
    """When each backup was last verified, for :func:`choose`.

    The journal is what only we wrote: when it holds any verification of
    the policy, a backup it has no record of counts as never verified,
    whatever its ``cinderbak:verified`` mark says (a tenant could keep
    its own backup looking fresh, or stale, forever). Only when the
    journal has none (lost, or new) are the marks used, as a fallback.
    """
    if journal_knows_policy:
        return {b: recorded.get(b) for b in backup_ids}
    return {b: parse_verified(marks.get(b)) for b in backup_ids}
