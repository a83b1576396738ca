"""When an expiry pass may skip listing a project's backups again.

In steady state most projects have nothing to delete in most passes: a
slot adds a backup per volume, one pass deletes what that made due, and
the other passes of the day list the project only to find nothing. Each
listing is a request (and a page of JSON) per project and pass.

A look is *quiet* when every volume the policy governs there exists and
holds no more available backups of ours than ``last`` keeps, none of
them failed or in flight, and no backup of the policy belongs to a
volume outside its targets (an orphan, or a volume that left the
policy). Such a state cannot make anything due by time alone: ``last``
keeps the newest that many whatever the calendar, and the other rules
only keep more. What could change it is a new backup of ours (which our
journal records before asking Cinder), a volume opting in, out or away
(the policy's targets), or a retention change (the policy). A pass
therefore keeps a fingerprint of those three with each quiet look and
skips the listing while the fingerprint is the same and the look is
younger than ``[expiry] quiet_project_max_age``. That age bounds what no
fingerprint sees: a backup an administrator resets to ``error``, one a
tenant forges, a journal restored from an old copy.

Everything here is pure: the expiry pass reads the journal and carries
the decisions out.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Iterable

from cinderbak.chains import AVAILABLE, BackupInfo
from cinderbak.retention import COUNT_KEYS, Retention, plan


def kept_by_last(backups: Iterable[BackupInfo], retention: Retention) -> bool:
    """Whether ``last`` alone keeps every backup of ours, all available:
    then nothing becomes due however time passes, and neither when a
    backup disappears, a hold is lifted or a foreign backup changes."""
    if not retention.last:
        return False
    ours = 0
    for backup in backups:
        if not backup.ours:
            continue
        if backup.status != AVAILABLE:
            return False
        ours += 1
    return ours <= retention.last


def volume_stays_quiet(
    backups: Iterable[BackupInfo],
    retention: Retention,
    now: datetime.datetime,
) -> bool:
    """Whether an existing volume's backups leave expiry nothing to
    delete at ``now`` or at any later time while they stay as they are.

    Either ``last`` keeps them all (:func:`kept_by_last`), or the plan
    deletes nothing even without ``within`` (which only keeps more, and
    only for a while): the count rules rank the periods that have
    backups, not calendar periods, so they do not move with time. Time
    also acts through failed backups (``error_grace``), backups still
    in flight and timestamps after ``now``; any of those is not quiet.
    """
    history = list(backups)
    if kept_by_last(history, retention):
        return True
    for backup in history:
        if backup.ours and (
            backup.status != AVAILABLE
            or not _settled_before(backup.created_at, now)
            or not _settled_before(backup.data_timestamp, now)
        ):
            return False
    if not any(getattr(retention, key) for key in COUNT_KEYS):
        return False  # ``within`` alone: everything ages out
    timeless = dataclasses.replace(retention, within=datetime.timedelta())
    return not plan(history, timeless, now).deletions


def _settled_before(
    value: datetime.datetime | None, now: datetime.datetime
) -> bool:
    """A timestamp the planner reads as it will later: aware, not after
    ``now``. (A missing or naive one is read as odd, never quiet.)"""
    return value is not None and value.tzinfo is not None and value <= now


def fingerprint(
    *,
    retention: Retention,
    deployment_id: str,
    volume_ids: Iterable[str],
    creations: Iterable[int],
) -> str:
    """A digest of what could make a quiet project's backups due: the
    retention (every field, the orphan ones too), whose backups count as
    ours, the project's volumes of the policy, and the journal's mark of
    the backups created for them
    (:meth:`cinderbak.journal.Journal.creations_mark`)."""
    digest = hashlib.sha256()
    for part in (
        repr(retention),
        deployment_id,
        ",".join(sorted(volume_ids)),
        ",".join(str(n) for n in creations),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def may_skip(
    look: tuple[str, datetime.datetime] | None,
    current: str,
    now: datetime.datetime,
    max_age: datetime.timedelta,
) -> bool:
    """Whether a pass at ``now`` may skip listing a project whose last
    quiet look was ``look`` (fingerprint, pass time), given the
    fingerprint ``current`` it has now. A look from a later pass than
    ``now`` (a pass replayed for an earlier slot) is not trusted."""
    if look is None or max_age <= datetime.timedelta():
        return False
    seen, looked_at = look
    return seen == current and looked_at <= now < looked_at + max_age


def quiet_after(
    history: list[BackupInfo],
    deleting: Iterable[str],
    retention: Retention,
    now: datetime.datetime,
) -> frozenset[str] | None:
    """Given a volume's backups and the ids this pass deletes of them,
    return the deletions that must all succeed for the volume to be
    quiet at ``now`` afterwards (empty: quiet already), or None when it
    will not be. A project is quiet when each of its volumes is, once
    all their needed deletions are gone."""
    gone = frozenset(deleting)
    left = [b for b in history if b.id not in gone]
    return gone if volume_stays_quiet(left, retention, now) else None
