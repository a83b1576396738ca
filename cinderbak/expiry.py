"""Expiry: the retention planner's decisions, carried out against Cinder.

For one policy this module finds every volume the policy covers, reads
the backups of each, asks the pure planner (:mod:`cinderbak.retention`)
what to keep and what to delete, and - unless it is a dry run - deletes
in the plan's order.

Which volumes a policy covers:

* volumes whose metadata names the policy (one server-side filtered list);
* orphans: volumes that no longer exist, whose newest backup of ours
  carries the policy's mark (``cinderbak:policy``). Cinder cannot filter
  backups by metadata, so the backups of every owning project are listed
  and the marks checked here. The owning projects are the service
  project (``ownership = service``) or, for ``ownership = project``, the
  projects of the current volumes and of the policy's runs in the journal.

A volume that still exists but no longer names the policy is left alone:
its backups are kept until it opts in again or is deleted.

Deleting, for each backup in the plan's order:

1. look at it as listed right before: still ours, not held (a tenant
   may have set a hold since the plan), ``available`` or ``error``, and
   Cinder's ``has_dependent_backups`` false - the truth before any
   delete. One fresh listing of the project (of the volume, for backups
   in the service project), taken right before its first deletion of
   the pass and again when older than ``FRESH_SECONDS``, serves every
   deletion there; a parent listed before we deleted its child is read
   again on its own (only Cinder knows when it stops counting the child);
2. record the intent (journal step ``backup_delete``), ask Cinder to
   delete, and record the backup id once Cinder accepted;
3. wait until the backup is gone before the next deletion of that volume
   (it may be the parent: Cinder refuses to delete a backup while any
   backup names it as parent, in whatever state, and only clears
   ``has_dependent_backups`` once the child is destroyed). One list call
   per poll covers every deletion in flight, and one more, of our backups
   in ``error``, tells a failed deletion from a finished one.

A deletion Cinder refuses is recorded and left to a later pass: no retry
loop within a pass. Deletions per pass are sized from the backlog
(:mod:`cinderbak.pace`): at least ``[expiry] min_deletions_per_pass``,
else one per volume with something due plus a ``catch_up_passes``-th of
the rest, so expiry keeps pace with what the policies create;
``max_deletions_per_pass`` is an optional cap.

Scale: projects are read one at a time as plain decoded listings
(:mod:`cinderbak.listing`), each volume planned as its project is read;
an expiry pass keeps only the volumes with something to delete (and skips
planning a volume that cannot have any), reads the next project only
when deletions could start (so its listing is still fresh enough to be
their last look), does not list a project whose last look was quiet
while nothing that could change that has changed (:mod:`cinderbak.quiet`,
:class:`QuietLooks`), and settles deletions from shared status listings
(one per poll, whatever the number in flight).

Each pass that deletes something is one journal run, policy
``expire:<name>``, target ``expiry``, keyed by the pass's ``now``: two
daemons starting the same pass get the same run and only one deletes.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from openstack import exceptions as sdk_exceptions
from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import (
    announce,
    backups,
    chains,
    discovery,
    dr_sync,
    listing,
    pace,
    quiet,
    retention,
    tenant,
)
from cinderbak.chains import BackupInfo
from cinderbak.cloud import API_ERRORS, NoRoleInProject
from cinderbak.journal import Journal, states, steps
from cinderbak.policy import Ownership, Policy

LOG = logging.getLogger(__name__)

GROUP = "expiry"
OPTS: list[cfg.Opt] = [
    cfg.IntOpt(
        "min_deletions_per_pass",
        default=50,
        min=0,
        help="A pass of a policy deletes at least this many of the backups "
        "its retention no longer keeps (all of them when fewer are due).",
    ),
    cfg.IntOpt(
        "catch_up_passes",
        default=4,
        min=1,
        help="Above min_deletions_per_pass, a pass deletes one backup of "
        "each volume that has one due (what a slot adds in steady state) "
        "and this fraction (1/catch_up_passes) of the rest of the "
        "policy's backlog: an excess is worked off over about this many "
        "passes, and in steady state expiry deletes what a slot made due "
        "in the next pass. Bounds the load a pass puts on the backup "
        "service after a retention change. The rest waits (the plan says "
        "'deferred').",
    ),
    cfg.IntOpt(
        "max_deletions_per_pass",
        default=0,
        min=0,
        help="Hard cap on the backups one expiry pass of a policy deletes; "
        "0 for none (the pass is sized from the backlog, see "
        "catch_up_passes). A cap below what the policies create per pass "
        "lets expired backups pile up.",
    ),
    cfg.IntOpt(
        "max_concurrent_deletions",
        default=4,
        min=1,
        help="Deletions in flight at once, each on a different volume. "
        "Within one volume deletions are sequential (a child must be "
        "gone before its parent can go).",
    ),
    cfg.IntOpt(
        "delete_timeout",
        default=900,
        min=1,
        help="Seconds to wait for one deletion to finish. After that the "
        "pass stops waiting: the deletion is reported as failed and the "
        "rest of that volume's deletions wait for a later pass.",
    ),
    cfg.IntOpt(
        "quiet_project_max_age",
        default=86400,
        min=0,
        help="Seconds a pass may rely on an earlier look at a project's "
        "backups that found nothing its retention could ever delete (all "
        "of ours available, no more than 'last' per volume, no orphan): "
        "while no backup was created there since, its volumes of the "
        "policy and the retention are unchanged and the look is younger "
        "than this, the project is not listed again. Bounds what no "
        "journal sees (an administrator resetting a backup to error, a "
        "tenant lifting a hold), and is capped at [journal] "
        "retention_days; 0 lists every project in every pass.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


RUN_PREFIX = "expire:"
RUN_TARGET = "expiry"

# Results of a deletion, as shown in the ``result`` column.
DRY_RUN = "dry run: would delete"
DELETED = "deleted"
ALREADY_GONE = "already gone"
GONE = (DELETED, ALREADY_GONE)
SKIPPED = "skipped"  # prefix: a re-read check said no
FAILED = "failed"  # prefix: Cinder refused, the deletion failed or hung

PLAN_COLUMNS = (
    "policy",
    "project_id",
    "volume_id",
    "backup_id",
    "created_at",
    "kind",
    "status",
    "action",
    "reasons",
)
EXPIRE_COLUMNS = PLAN_COLUMNS[:-1] + ("result", "reasons")


@dataclasses.dataclass(frozen=True)
class ExpiryRow:
    """One backup's line in a plan or an expiry pass.

    A problem that stopped a whole project or volume from being planned
    (no role, an API error) is a row with action ``error`` and no backup.
    """

    policy: str
    project_id: str
    volume_id: str
    backup_id: str
    created_at: str
    kind: str
    status: str
    action: str
    reasons: str
    result: str = ""

    @property
    def failed(self) -> bool:
        return self.action == "error" or self.result.startswith(FAILED)

    def row(self, columns: Iterable[str] = EXPIRE_COLUMNS) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in columns)

    @classmethod
    def problem(
        cls, policy: str, project_id: str, volume_id: str, error: str
    ) -> ExpiryRow:
        return cls(
            policy=policy,
            project_id=project_id,
            volume_id=volume_id,
            backup_id="",
            created_at="",
            kind="",
            status="",
            action="error",
            reasons=error,
            result=f"{FAILED}: {error}",
        )


@dataclasses.dataclass(frozen=True)
class VolumePlan:
    """The plan for the backups of one volume in one owning project."""

    policy: Policy
    project_id: str  # the project the backups belong to
    volume_id: str
    volume_exists: bool
    history: Mapping[str, BackupInfo]  # every backup, ours or not, by id
    plan: retention.Plan
    # When the project's listing behind this plan began (time.monotonic)
    # and the planned deletions as listed then: the last look before a
    # delete while it is fresh (see _Deleter._fresh).
    listed: tuple[float, Mapping[str, Mapping[str, Any]]] | None = None

    def row(self, decision: retention.Decision, result: str = "") -> ExpiryRow:
        info = self.history[decision.backup_id]
        reasons = list(decision.reasons)
        if not self.volume_exists and not any(
            "volume deleted" in reason for reason in reasons
        ):
            reasons.append("volume deleted")
        return ExpiryRow(
            policy=self.policy.name,
            project_id=self.project_id,
            volume_id=self.volume_id,
            backup_id=decision.backup_id,
            created_at=_iso(info.created_at),
            kind=chains.INCREMENTAL if info.is_incremental else chains.FULL,
            status=info.status,
            action=decision.action,
            reasons="; ".join(reasons),
            result=result,
        )

    def rows(self) -> list[ExpiryRow]:
        """One row per backup: kept ones newest first, then deletions."""
        return [self.row(d) for d in self.plan.decisions]

    def plan_rows(self) -> Iterator[tuple[str, ...]]:
        """The cells of :meth:`rows` in :data:`PLAN_COLUMNS` order, made
        directly: ``cinderbak plan`` prints one per backup of a region
        (100,000 at 10,000 volumes), and a row object per backup was a
        fifth of its CPU."""
        name, project, volume = (
            self.policy.name,
            self.project_id,
            self.volume_id,
        )
        deleted = not self.volume_exists
        history = self.history
        for decision in self.plan.decisions:
            info = history[decision.backup_id]
            reasons = decision.reasons
            if deleted and not any("volume deleted" in r for r in reasons):
                reasons = (*reasons, "volume deleted")
            yield (
                name,
                project,
                volume,
                decision.backup_id,
                _iso(info.created_at),
                chains.INCREMENTAL if info.is_incremental else chains.FULL,
                info.status,
                decision.action,
                "; ".join(reasons),
            )


def _iso(value: datetime.datetime | None) -> str:
    """``value`` in UTC to the second, as ``2026-12-01T20:00:00Z``.

    ``isoformat`` instead of ``strftime``: a plan prints one per backup,
    and strftime was a twentieth of a region's plan.
    """
    if value is None:
        return ""
    if value.utcoffset():
        value = value.astimezone(datetime.UTC)
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


# -- pure helpers ------------------------------------------------------


def refusal(
    info: BackupInfo, volume_id: str | None, expected_volume_id: str
) -> str | None:
    """Given a backup as just re-read, say why it must not be deleted now,
    or return None when it may be.

    The planner already decided on a listing taken earlier; this is the
    last look before the delete call, so every rule that protects data is
    checked again here (defence in depth).
    """
    if not info.ours:
        return "not ours: cinderbak:owner is not this deployment's"
    if volume_id != expected_volume_id:
        return f"belongs to volume {volume_id}, not {expected_volume_id}"
    if info.held:
        return f"held ({tenant.HOLD})"
    if info.status not in retention.FINAL:
        return f"status is now {info.status}"
    if info.has_dependent_backups:
        return "Cinder reports dependent backups"
    return None


def governing_policy(listed: Iterable[Any], deployment_id: str) -> str | None:
    """Given the backups of one volume in one project (as listed, or SDK
    objects), return the ``cinderbak:policy`` of the newest backup of
    ours (by data timestamp, then creation time), or None if none of
    them is ours.

    A deleted volume's backups are expired by that one policy, so two
    policies never plan the same backups.
    """
    best: tuple[Any, ...] | None = None
    for backup in listed:
        metadata = dict(_field(backup, "metadata") or {})
        if not tenant.is_ours(metadata, deployment_id):
            continue
        created = backups.parse_time(_field(backup, "created_at"))
        data = backups.parse_time(_field(backup, "data_timestamp")) or created
        key = (
            _sortable(data),
            _sortable(created),
            _field(backup, "id"),
            metadata.get(tenant.POLICY),
        )
        if best is None or key > best:
            best = key
    return None if best is None else best[3]


def _field(item: Any, name: str) -> Any:
    """A field of a backup, listed (a dict) or an SDK object."""
    return item.get(name) if type(item) is dict else getattr(item, name, None)


_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def _sortable(value: datetime.datetime | None) -> datetime.datetime:
    return _EPOCH if value is None else value.astimezone(datetime.UTC)


# -- reading -----------------------------------------------------------


def _options(conf: cfg.ConfigOpts) -> Any:
    register_opts(conf)  # idempotent; opts.py registers them too
    return conf[GROUP]


def select_policies(
    policies: Mapping[str, Policy], names: Collection[str] | None
) -> list[Policy]:
    """Return the named policies (all when ``names`` is empty), sorted.

    Raise LookupError naming the unknown policy and the defined ones.
    """
    chosen = sorted(names or policies)
    for name in chosen:
        if name not in policies:
            raise LookupError(
                f"no policy {name!r}; defined: "
                + (", ".join(sorted(policies)) or "(none)")
            )
    return [policies[name] for name in chosen]


@dataclasses.dataclass(frozen=True)
class Pace:
    """How a pass sizes its deletions (:mod:`cinderbak.pace`)."""

    floor: int
    spread: int
    cap: int = 0

    @classmethod
    def of(cls, conf: cfg.ConfigOpts, max_deletions: int | None) -> Pace:
        """From the options; an explicit ``max_deletions`` is a fixed
        budget (what a caller asks for one pass)."""
        if max_deletions is not None:
            return cls(floor=max_deletions, spread=1, cap=max_deletions)
        options = _options(conf)
        return cls(
            floor=options.min_deletions_per_pass,
            spread=options.catch_up_passes,
            cap=options.max_deletions_per_pass,
        )


class QuietLooks:
    """One pass's use of quiet looks (:mod:`cinderbak.quiet`): which
    projects it need not list, and what the ones it listed showed,
    recorded in the journal once the pass's deletions are known."""

    def __init__(
        self, parts: Any, policy: Policy, now: datetime.datetime
    ) -> None:
        self.journal: Journal = parts.journal
        self.policy = policy
        self.now = now
        self.deployment_id = parts.conf.deployment_id
        # Never longer than the journal keeps the creations it compares:
        # a pruned creation must not look like none made.
        self.max_age = min(
            datetime.timedelta(
                seconds=_options(parts.conf).quiet_project_max_age
            ),
            self.journal.retention,
        )
        self.known = (
            self.journal.quiet_looks(policy.name) if self.enabled else {}
        )
        self.current: dict[str, str] = {}  # fingerprint as of this pass
        self.pending: dict[str, frozenset[str]] = {}  # quiet once gone
        self.loud: set[str] = set()
        self.skipped = 0

    @property
    def enabled(self) -> bool:
        """False with ``quiet_project_max_age = 0``: then a pass neither
        skips nor works out quietness (:func:`expire_policy`)."""
        return bool(self.max_age)

    def skip(self, project_id: str, volume_ids: Collection[str]) -> bool:
        """Whether the pass may leave ``project_id`` unlisted. Reads the
        journal's creations mark before the listing it may spare, so a
        backup made after that read changes the next pass's fingerprint."""
        current = quiet.fingerprint(
            retention=self.policy.retention,
            deployment_id=self.deployment_id,
            volume_ids=volume_ids,
            creations=self.journal.creations_mark(volume_ids),
        )
        self.current[project_id] = current
        look = self.known.get(project_id)
        if quiet.may_skip(look, current, self.now, self.max_age):
            self.skipped += 1
            return True
        return False

    def seen(self, project_id: str, needed: frozenset[str] | None) -> None:
        """What a listing of ``project_id`` showed: quiet once the
        ``needed`` deletions are gone, or never (None)."""
        if needed is None:
            self.loud.add(project_id)
        else:
            self.pending[project_id] = needed

    def record(self, gone: AbstractSet[str]) -> None:
        """Remember the projects that are quiet now that ``gone`` (the
        backups this pass deleted) are; forget earlier looks at the
        others. Called once per pass, after its deletions."""
        if not self.enabled:
            return
        name = self.policy.name
        found = {
            p: self.current[p]
            for p, needed in self.pending.items()
            if needed <= gone
        }
        self.journal.remember_quiet(name, found, self.now)
        stale = (self.loud | set(self.pending)) - set(found)
        self.journal.forget_quiet(name, stale & set(self.known))
        if self.skipped:
            LOG.info(
                "policy %s: %d projects not listed, quiet and unchanged "
                "since their last look",
                name,
                self.skipped,
            )


class _Quietness:
    """A project's quietness, worked out volume by volume
    (:func:`cinderbak.quiet.quiet_after`) as its batches are planned: the
    deletions that must all succeed for it to be quiet, or None once it
    cannot be."""

    def __init__(self) -> None:
        self.needed: set[str] | None = set()

    def lost(self) -> None:
        self.needed = None

    def add(
        self,
        history: list[BackupInfo],
        deleting: Iterable[str],
        rules: retention.Retention,
        now: datetime.datetime,
    ) -> None:
        if self.needed is None:
            return
        needed = quiet.quiet_after(history, deleting, rules, now)
        if needed is None:
            self.needed = None
        else:
            self.needed |= needed


class _Reader:
    """Gathers the plans of one policy, one owning project at a time."""

    def __init__(self, parts: Any, policy: Policy) -> None:
        self.parts = parts
        self.cloud = parts.cloud
        self.policy = policy
        self.deployment_id = parts.conf.deployment_id
        self.problems: list[ExpiryRow] = []
        self._exists: dict[str, bool] = {}
        self.backlog = 0  # deletions due, over every volume planned
        self.volumes_due = 0  # volumes with at least one of them
        self.granted = 0  # of which this pass makes

    def owners(self, targets: Mapping[str, str]) -> list[str]:
        """The projects that may hold backups of this policy."""
        if self.policy.ownership is Ownership.SERVICE:
            return [str(self.cloud.service.current_project_id)]
        projects = set(targets.values())
        projects |= self.parts.journal.projects_of_policy(self.policy.name)
        return sorted(projects)

    def volume_exists(self, volume_id: str) -> bool:
        if volume_id not in self._exists:
            try:
                self.cloud.call(
                    self.cloud.service.block_storage.get_volume, volume_id
                )
                self._exists[volume_id] = True
            except sdk_exceptions.NotFoundException:
                self._exists[volume_id] = False
        return self._exists[volume_id]

    def covered(
        self,
        volume_id: str,
        listed: list[dict[str, Any]],
        targets: Mapping[str, str],
    ) -> bool | None:
        """Return whether the volume exists when this policy governs its
        backups, else None (not ours to plan)."""
        if volume_id in targets:
            return True
        if not self._marked_mine(listed):
            return None
        if governing_policy(listed, self.deployment_id) != self.policy.name:
            return None  # another policy's pass governs this orphan
        if self.volume_exists(volume_id):
            return None  # opted out or moved to another policy: kept
        return False

    def _marked_mine(self, listed: list[dict[str, Any]]) -> bool:
        """Whether any listed backup is ours with this policy's mark."""
        mine = self.policy.name
        return any(
            tenant.is_ours(b.get("metadata") or {}, self.deployment_id)
            and (b.get("metadata") or {}).get(tenant.POLICY) == mine
            for b in listed
        )

    def targets(self) -> dict[str, str]:
        """The policy's volumes now, by id, with their projects."""
        found = self.cloud.call(
            lambda: [
                discovery.listed(volume)
                for volume in discovery.volumes_of_policy(
                    self.cloud, self.policy
                )
            ]
        )
        return {volume.id: volume.project_id for volume in found}

    def plans(
        self,
        now: datetime.datetime,
        pace_of: Pace,
        volume_ids: Collection[str] | None,
        deletions_only: bool,
        owns: Callable[[str], bool] | None = None,
        looks: QuietLooks | None = None,
    ) -> Iterator[VolumePlan]:
        """Yield the plan of each volume, project by project, and within a
        project batch by batch of whole volumes as the listing is read
        (:func:`cinderbak.listing.backups_by_volume`: the service project
        holds every volume's history, which is never held whole);
        deletions are granted as the backlog is seen
        (:func:`cinderbak.pace.allowance`). With ``deletions_only``, a
        volume that cannot have a deletion is not planned and a plan
        without deletions is not yielded (an expiry pass). With
        ``looks``, a project whose last look was quiet and that nothing
        changed since is not listed (:mod:`cinderbak.quiet`), and what
        each listed project shows is told to ``looks``."""
        targets = self.targets()
        volumes_of = self._volumes_by_owner(targets)
        for project_id in self.owners(targets):
            if looks is not None and looks.skip(
                project_id, volumes_of.get(project_id, ())
            ):
                continue
            problems_before = len(self.problems)
            quietness = _Quietness() if looks is not None else None
            try:
                for began, by_volume in listing.backups_by_volume(
                    self.cloud, project_id
                ):
                    yield from self._batch_plans(
                        now,
                        pace_of,
                        volume_ids,
                        deletions_only,
                        (project_id, began, by_volume, targets),
                        owns,
                        quietness,
                    )
            except API_ERRORS as exc:
                name = self.policy.name
                LOG.error("policy %s: project %s: %s", name, project_id, exc)
                self.problems.append(
                    ExpiryRow.problem(name, project_id, "", str(exc))
                )
                continue  # not read whole: its last look stays
            if looks is not None and quietness is not None:
                looks.seen(
                    project_id,
                    None
                    if len(self.problems) != problems_before
                    or quietness.needed is None
                    else frozenset(quietness.needed),
                )

    def _volumes_by_owner(
        self, targets: Mapping[str, str]
    ) -> dict[str, list[str]]:
        """The policy's volumes whose backups each owning project holds."""
        if self.policy.ownership is Ownership.SERVICE:
            return {str(self.cloud.service.current_project_id): list(targets)}
        found: dict[str, list[str]] = {}
        for volume_id, project_id in targets.items():
            found.setdefault(project_id, []).append(volume_id)
        return found

    def _batch_plans(
        self,
        now: datetime.datetime,
        pace_of: Pace,
        volume_ids: Collection[str] | None,
        deletions_only: bool,
        read: tuple[str, float, dict[str, list[Any]], Mapping[str, str]],
        owns: Callable[[str], bool] | None = None,
        quietness: _Quietness | None = None,
    ) -> Iterator[VolumePlan]:
        """Plan the volumes of one batch of a project's listing (whole
        volumes, listed from ``began`` on); tell ``quietness`` what each
        leaves behind."""
        project_id, began, by_volume, targets = read
        service = self.policy.ownership is Ownership.SERVICE
        trusted = self.parts.journal.known_backups(by_volume)
        infos = {
            volume_id: [
                backups.trusted_view(
                    backups.info_from_dict(item, self.deployment_id),
                    volume_id,
                    trusted,
                )
                for item in items
            ]
            for volume_id, items in by_volume.items()
        }
        # Only a backup our journal created has an expected parent there:
        # the ids it knows are all that is worth asking about.
        made = set().union(*trusted.values()) if trusted else set()
        parents = self.parts.journal.expected_parents(
            info.id
            for found in infos.values()
            for info in found
            if info.ours and info.id in made
        )
        for volume_id in sorted(by_volume):
            if not any(info.ours for info in infos[volume_id]):
                continue
            tracked = False
            if quietness is not None:
                if targets.get(volume_id) == project_id or (
                    service and volume_id in targets
                ):
                    tracked = True
                elif volume_id in targets or self._marked_mine(
                    by_volume[volume_id]
                ):
                    # An orphan, a volume that left the policy or one now
                    # in another project: what makes these due is not in
                    # this project's fingerprint.
                    quietness.lost()
            found, deleting = self._volume_plan(
                now,
                pace_of,
                (project_id, volume_id, began, by_volume[volume_id], targets),
                infos[volume_id],
                parents,
                deletions_only,
                owns,
            )
            if tracked and quietness is not None:
                quietness.add(
                    infos[volume_id], deleting, self.policy.retention, now
                )
            if found is None:
                continue
            if volume_ids and volume_id not in volume_ids:
                continue  # planned all the same: it used the budget
            yield found

    def _volume_plan(
        self,
        now: datetime.datetime,
        pace_of: Pace,
        read: tuple[str, str, float, list[Any], Mapping[str, str]],
        infos: list[BackupInfo],
        parents: Mapping[str, str],
        deletions_only: bool,
        owns: Callable[[str], bool] | None,
    ) -> tuple[VolumePlan | None, list[str]]:
        """One volume's plan (None: nothing to yield) and the ids it
        deletes."""
        project_id, volume_id, began, listed_items, targets = read
        name = self.policy.name
        if owns is not None and not owns(volume_id):
            return None, []  # another daemon's share
        try:
            exists = self.covered(volume_id, listed_items, targets)
        except API_ERRORS as exc:
            self.problems.append(
                ExpiryRow.problem(name, project_id, volume_id, str(exc))
            )
            return None, []
        if exists is None:
            return None, []
        history = {}
        for info in infos:
            parent = parents.get(info.id)
            if parent and info.is_incremental:
                info = info._replace(parent_id=parent)
            history[info.id] = info
        if deletions_only and retention.nothing_to_delete(
            history.values(),
            self.policy.retention,
            volume_exists=exists,
        ):
            return None, []
        try:
            result = self._plan(history, now, exists, pace_of)
        except ValueError as exc:  # an id listed twice (paging)
            self.problems.append(
                ExpiryRow.problem(name, project_id, volume_id, str(exc))
            )
            return None, []
        deleting = [d.backup_id for d in result.deletions]
        if deletions_only and not deleting:
            return None, deleting
        listed = None
        if deletions_only:  # rows are of deletions only: keep those
            history = {i: history[i] for i in deleting}
            as_listed = {item["id"]: item for item in listed_items}
            listed = (began, {i: as_listed[i] for i in history})
        return (
            VolumePlan(
                policy=self.policy,
                project_id=project_id,
                volume_id=volume_id,
                volume_exists=exists,
                history=history,
                plan=result,
                listed=listed,
            ),
            deleting,
        )

    def _plan(
        self,
        history: Mapping[str, BackupInfo],
        now: datetime.datetime,
        exists: bool,
        pace_of: Pace,
    ) -> retention.Plan:
        """Plan one volume; grant it what the pass allows of its deletions
        (the safe prefix of their order, the rest deferred)."""
        result = retention.plan(
            history.values(), self.policy.retention, now, volume_exists=exists
        )
        due = len(result.deletions)
        granted = pace.allowance(
            self.backlog,
            self.granted,
            due,
            floor=pace_of.floor,
            spread=pace_of.spread,
            cap=pace_of.cap,
            volumes=self.volumes_due,
        )
        self.backlog += due
        self.granted += granted
        self.volumes_due += 1 if due else 0
        if granted == due:
            return result
        return retention.plan(
            history.values(),
            self.policy.retention,
            now,
            volume_exists=exists,
            max_deletions=granted,
        )


def iter_plans(
    parts: Any,
    policy: Policy,
    now: datetime.datetime,
    *,
    max_deletions: int | None = None,
    volume_ids: Collection[str] | None = None,
    deletions_only: bool = False,
    owns: Callable[[str], bool] | None = None,
    looks: QuietLooks | None = None,
) -> Iterator[VolumePlan | ExpiryRow]:
    """Yield the plan of every volume ``policy`` covers that has backups
    of ours, project by project as each is read, then rows for the
    projects or volumes that could not be planned.

    Deletions are sized from the backlog (:class:`Pace`; a fixed budget
    with ``max_deletions``) and granted in the order volumes are planned
    (by project, then volume id). ``volume_ids`` limits what is yielded,
    not what is planned, so each plan is the one a pass would carry out;
    ``deletions_only`` yields only plans that delete something; with
    ``looks`` (a pass that deletes) quiet, unchanged projects are not
    read. Reads only: nothing is changed.
    """
    reader = _Reader(parts, policy)
    yield from reader.plans(
        now,
        Pace.of(parts.conf, max_deletions),
        volume_ids,
        deletions_only,
        owns,
        looks,
    )
    yield from reader.problems
    if reader.backlog:
        LOG.info(
            "policy %s: %d deletions due, %d in this pass",
            policy.name,
            reader.backlog,
            reader.granted,
        )


def _split(
    items: Iterable[VolumePlan | ExpiryRow],
) -> tuple[list[VolumePlan], list[ExpiryRow]]:
    plans: list[VolumePlan] = []
    problems: list[ExpiryRow] = []
    for item in items:
        if isinstance(item, ExpiryRow):
            problems.append(item)
        else:
            plans.append(item)
    return plans, problems


# -- deleting ----------------------------------------------------------


# Cinder destroys a deleted backup before it lowers the parent's
# dependent count: right after a child is gone, the parent may still say
# it has dependents. Look again this many times, a poll interval apart.
RECHECKS = 3

_STARTED, _SETTLED, _LATER = "started", "settled", "later"

FRESH_SECONDS = 5.0
"""How old the listing a deletion is checked against may be. A tenant's
hold (or any change) made more than this before a deletion is seen; a
GET per backup narrowed that to one request's time at twice the
requests. A volume's deletions are sequential, so a project's later ones
are checked against a listing taken again."""


@dataclasses.dataclass
class _Queue:
    """One volume's deletions in a pass: strictly one after the other."""

    plan: VolumePlan
    pending: list[retention.Decision]
    current: str | None = None
    step: int | None = None
    deadline: float = 0.0
    resume_at: float = 0.0  # no new deletion before this clock reading
    deleted_any: bool = False
    rechecks: int = 0

    @classmethod
    def of(cls, plan: VolumePlan) -> _Queue:
        """The plan's deletions, failed backups first.

        A failed backup of ours that the planner deletes has no dependents
        (the planner keeps those), but Cinder still counts it as a child
        of the parent it was started on and refuses to delete that parent
        while it exists. Taking failed ones first keeps the order safe and
        spares a refusal.
        """
        deletions = plan.plan.deletions
        failed = [
            d
            for d in deletions
            if plan.history[d.backup_id].status != "available"
        ]
        rest = [d for d in deletions if d not in failed]
        return cls(plan, failed + rest)


class _Deleter:
    """Carries out the deletions of one pass, recorded in the journal."""

    def __init__(
        self,
        parts: Any,
        policy: Policy,
        now: datetime.datetime,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parts = parts
        self.cloud = parts.cloud
        self.journal: Journal = parts.journal
        self.policy = policy
        self.now = now
        self.stop = stop
        self.clock = clock
        self.options = _options(parts.conf)
        self.deployment_id = parts.conf.deployment_id
        self.results: dict[str, str] = {}
        self.plans: list[VolumePlan] = []
        self.problems: list[ExpiryRow] = []
        self._stream: Iterator[VolumePlan | ExpiryRow] = iter(())
        self.run_id = ""
        self._listed: dict[
            tuple[str, str], tuple[float, dict[str, dict[str, Any]]]
        ] = {}

    def execute(self, stream: Iterable[VolumePlan | ExpiryRow]) -> None:
        """Delete what the plans of ``stream`` (:func:`iter_plans`) say,
        each volume's as soon as it is planned; results per backup id go
        to ``results``, the plans with deletions to ``plans`` and the
        rows of what could not be planned to ``problems``.

        The stream is read only as fast as deletions start: a project is
        listed right before its deletions, so that listing is still fresh
        enough to be their last look (:meth:`_fresh`) instead of a second
        listing of the project; and the first deletion of a pass does
        not wait for every project to be read.
        """
        self._stream = iter(stream)
        first = self._pull()
        if first is None:
            return
        run = self.journal.begin_run(
            RUN_PREFIX + self.policy.name,
            RUN_TARGET,
            self.now,
            project_id=None,
        )
        if not run.created:
            why = (
                f"{SKIPPED}: expiry pass {self.now.isoformat()} of this "
                f"policy is already {run.state} (run {run.id})"
            )
            while self._pull() is not None:
                pass
            for plan in self.plans:
                for d in plan.plan.deletions:
                    self.results[d.backup_id] = why
            return
        self.run_id = run.id
        self.journal.start_run(run.id)
        try:
            self._loop(first)
        except Exception as exc:
            self.journal.finish_run(
                run.id,
                states.FAILED,
                {**self._summary(), "error": str(exc)},
                attrs=self._counts(),
            )
            raise
        summary = self._summary()
        if summary["failed"] and summary["deleted"]:
            state = states.PARTIAL
        elif summary["failed"]:
            state = states.FAILED
        else:
            state = states.SUCCEEDED
        self.journal.finish_run(run.id, state, summary, attrs=self._counts())

    def _pull(self) -> _Queue | None:
        """The next volume with deletions from the stream (None at its
        end); plans and problem rows are kept as they pass."""
        for item in self._stream:
            if isinstance(item, ExpiryRow):
                self.problems.append(item)
                continue
            self.plans.append(item)
            queue = _Queue.of(item)
            if queue.pending:
                return queue
        return None

    def _counts(self) -> dict[str, int]:
        """For the pass's report: deletions planned, backups kept (over
        the volumes with deletions)."""
        return {
            "deletions": sum(len(p.plan.deletions) for p in self.plans),
            "kept": sum(len(p.plan.keep_ids) for p in self.plans),
        }

    def _summary(self) -> dict[str, int]:
        values = list(self.results.values())
        return {
            "deleted": sum(v in (DELETED, ALREADY_GONE) for v in values),
            "failed": sum(v.startswith(FAILED) for v in values),
            "skipped": sum(v.startswith(SKIPPED) for v in values),
        }

    def _loop(self, first: _Queue) -> None:
        limit = self.options.max_concurrent_deletions
        waiting = collections.deque([first])
        in_flight: list[_Queue] = []
        more = True  # the stream may hold more plans
        while waiting or in_flight or more:
            # Plan on only while deletions could start right away.
            while more and len(waiting) + len(in_flight) < limit:
                queue = self._pull()
                if queue is None:
                    more = False
                else:
                    waiting.append(queue)
            # Each waiting volume is looked at once per round at most; one
            # not ready (a recheck pause) goes to the back.
            for _ in range(len(waiting)):
                if len(in_flight) >= limit:
                    break
                queue = waiting.popleft()
                if queue.resume_at > self.clock():
                    waiting.append(queue)
                elif self._start_next(queue):
                    in_flight.append(queue)
                elif queue.pending:
                    waiting.append(queue)  # looks again after a pause
            if not (waiting or in_flight):
                if more:
                    continue  # every started deletion is settled
                return
            if self.stop.wait(self.parts.conf.poll_interval):
                for queue in [*waiting, *in_flight]:
                    self._give_up(queue, "stopping")
                return
            if not in_flight:
                continue
            deleting = listing.ids_in_status(self.cloud, "backups", "deleting")
            left = []
            for queue in list(in_flight):
                if queue.current not in deleting:
                    left.append(queue)
                elif self.clock() > queue.deadline:
                    self._timed_out(queue)
                    in_flight.remove(queue)
            if not left:
                continue
            # No longer deleting: gone, or in error (Cinder's mark of a
            # failed deletion). One listing of the errors tells them all.
            failed = listing.in_status(self.cloud, "backups", "error")
            for queue in left:
                self._settled(queue, failed.get(str(queue.current)))
                in_flight.remove(queue)
                if queue.pending:
                    waiting.append(queue)

    def _fresh(self, queue: _Queue) -> Mapping[str, Mapping[str, Any]]:
        """The backups of the queue's project (of its volume, for backups
        in the service project) as listed now, by id: the last look before
        a delete (see :func:`refusal`), taken right before the first
        deletion there and again when older than FRESH_SECONDS.

        One listing covers every deletion of a project in a pass, instead
        of one GET per backup: a tenant's hold set after planning, a
        changed owner mark or status still stop the deletion.
        """
        plan = queue.plan
        service = plan.policy.ownership is Ownership.SERVICE
        key = (plan.project_id, plan.volume_id if service else "")
        taken = self._listed.get(key)
        if taken is None or self.clock() - taken[0] > FRESH_SECONDS:
            # The planning listing, while fresh, is as good a last look
            # (a pass's first deletions start right after planning).
            seed = plan.listed
            if seed is not None and self.clock() - seed[0] <= FRESH_SECONDS:
                return seed[1]
            params = {"volume_id": plan.volume_id} if service else {}
            listed = {
                item["id"]: item
                for item in listing.project_backups(
                    self.cloud, plan.project_id, params
                )
            }
            taken = self._listed[key] = (self.clock(), listed)
        return taken[1]

    def _storage(self, plan: VolumePlan) -> Any:
        """Block Storage acting where the plan's backups are: the service
        project's, or the tenant's project with its own token (cached);
        a deletion is a write, and is made as the owner would make it."""
        if plan.policy.ownership is Ownership.SERVICE:
            return self.cloud.service.block_storage
        return self.cloud.for_project(plan.project_id).block_storage

    def _start_next(self, queue: _Queue) -> bool:
        """Start the queue's next deletion that passes the checks; return
        whether one is now in flight."""
        while queue.pending:
            outcome = self._delete(queue, queue.pending[0])
            if outcome == _LATER:
                return False
            queue.pending.pop(0)
            queue.rechecks = 0
            if outcome == _STARTED:
                return True
        return False

    def _delete(self, queue: _Queue, decision: retention.Decision) -> str:
        """Re-read the backup and, if it may go, ask Cinder to delete it.

        Return _STARTED (in flight), _SETTLED (a result is recorded) or
        _LATER (Cinder may not yet have counted a child we deleted as
        gone: look again after a pause).
        """
        plan = queue.plan
        backup_id = decision.backup_id
        try:
            found = self._fresh(queue).get(backup_id)
            if (
                found is not None
                and queue.deleted_any
                and found.get("has_dependent_backups")
            ):
                # Listed before we deleted its child: only Cinder knows
                # whether it still counts one. Asked about this one.
                found = listing.backup(self.cloud, backup_id)
        except API_ERRORS as exc:
            self.results[backup_id] = f"{FAILED}: cannot re-read it: {exc}"
            return _SETTLED
        if found is None:
            self.results[backup_id] = ALREADY_GONE
            return _SETTLED
        info = backups.info_from_dict(found, self.deployment_id)
        volume_id = found.get("volume_id")
        why_not = refusal(info, volume_id, plan.volume_id)
        if (
            why_not
            and queue.deleted_any
            and queue.rechecks < RECHECKS
            and refusal(
                info._replace(has_dependent_backups=False),
                volume_id,
                plan.volume_id,
            )
            is None
        ):
            queue.rechecks += 1
            queue.resume_at = self.clock() + self.parts.conf.poll_interval
            return _LATER
        if why_not:
            LOG.warning(
                "policy %s: not deleting backup %s of volume %s: %s",
                self.policy.name,
                backup_id,
                plan.volume_id,
                why_not,
            )
            self.results[backup_id] = f"{SKIPPED}: {why_not}"
            return _SETTLED
        try:
            storage = self._storage(plan)
        except (NoRoleInProject, *API_ERRORS) as exc:
            self.results[backup_id] = f"{FAILED}: {exc}"
            return _SETTLED
        step = self.journal.begin_step(
            self.run_id,
            steps.BACKUP_DELETE,
            target=plan.volume_id,
            details={
                "backup_id": backup_id,
                "project_id": plan.project_id,
                "status": info.status,
                "reasons": list(decision.reasons),
            },
        )
        try:
            self.cloud.call(
                storage.delete_backup, backup_id, ignore_missing=False
            )
        except sdk_exceptions.NotFoundException:
            self.journal.complete_step(step, details={"note": ALREADY_GONE})
            self.results[backup_id] = ALREADY_GONE
            return _SETTLED
        except sdk_exceptions.SDKException as exc:
            # 400/409 (e.g. "Incremental backups exist for this backup"):
            # recorded and left to a later pass, never repeated here.
            reason = f"Cinder refused: {exc}"
            self.journal.fail_step(step, reason)
            self.results[backup_id] = f"{FAILED}: {reason}"
            LOG.error(
                "policy %s: backup %s: %s", self.policy.name, backup_id, reason
            )
            return _SETTLED
        self.journal.set_step_resource(step, backup_id)
        queue.current = backup_id
        queue.step = step
        queue.deadline = self.clock() + self.options.delete_timeout
        return _STARTED

    def _settled(
        self, queue: _Queue, failed: Mapping[str, Any] | None
    ) -> None:
        """The backup is no longer listed as deleting: it is gone, or, as
        the listing of backups in error shows it (``failed``), its
        deletion failed."""
        backup_id, step = queue.current, queue.step
        assert backup_id is not None and step is not None
        if failed is None:
            self.journal.complete_step(step)
            self.results[backup_id] = DELETED
            queue.deleted_any = True
            LOG.info(
                "policy %s: deleted backup %s of volume %s",
                self.policy.name,
                backup_id,
                queue.plan.volume_id,
            )
        else:
            reason = failed.get("fail_reason") or "status error"
            self.journal.fail_step(step, f"deletion failed: {reason}")
            self.results[backup_id] = f"{FAILED}: deletion failed: {reason}"
        queue.current = queue.step = None

    def _timed_out(self, queue: _Queue) -> None:
        seconds = self.options.delete_timeout
        reason = f"still deleting after {seconds} s; a later pass looks again"
        assert queue.step is not None and queue.current is not None
        self.journal.fail_step(queue.step, reason)
        self.results[queue.current] = f"{FAILED}: {reason}"
        blocker = queue.current
        queue.current = queue.step = None
        self._give_up(queue, f"waits for {blocker} to be deleted")

    def _give_up(self, queue: _Queue, why: str) -> None:
        """Leave the rest of the queue to a later pass. A deletion in
        flight keeps its open step: recovery or the next pass settles it."""
        for decision in queue.pending:
            self.results[decision.backup_id] = f"{SKIPPED}: {why}"
        queue.pending.clear()
        if queue.current is not None:
            self.results.setdefault(
                queue.current, f"{SKIPPED}: {why} (deletion requested)"
            )


def expire_policy(
    parts: Any,
    policy: Policy,
    now: datetime.datetime,
    *,
    dry_run: bool,
    max_deletions: int | None = None,
    stop: threading.Event | None = None,
    owns: Callable[[str], bool] | None = None,
) -> list[ExpiryRow]:
    """Plan every volume of ``policy`` and delete what the plans say.

    Return one row per deletion decided (with its result) and one per
    project or volume that could not be planned. With ``dry_run`` nothing
    is deleted and nothing is written to the journal. ``max_deletions``
    fixes the pass's budget; by default it is sized from the backlog.
    ``stop`` ends the pass early; deletions already requested then
    finish in Cinder and their steps stay open for the next start.
    ``owns`` (a volume id to whether this daemon expires it) divides the
    volumes between the daemons of a region; each sizes its budget from
    the backlog of its own share.
    """
    looks = None if dry_run else QuietLooks(parts, policy, now)
    stream = iter_plans(
        parts,
        policy,
        now,
        max_deletions=max_deletions,
        deletions_only=True,
        owns=owns,
        looks=looks if looks is not None and looks.enabled else None,
    )
    if looks is None:  # a dry run
        work, rows = _split(stream)
        for p in work:
            rows.extend(p.row(d, DRY_RUN) for d in p.plan.deletions)
        return rows
    deleter = _Deleter(parts, policy, now, stop or threading.Event())
    deleter.execute(stream)
    results = deleter.results
    gone = {i for i, r in results.items() if r in GONE}
    looks.record(gone)
    dr_sync.forget(parts, sorted(gone))
    if deleter.run_id:
        announce.run_ended(parts, RUN_PREFIX + policy.name, now)
    rows = list(deleter.problems)
    for p in deleter.plans:
        rows.extend(
            p.row(d, results.get(d.backup_id, f"{SKIPPED}: not reached"))
            for d in p.plan.deletions
        )
    return rows
