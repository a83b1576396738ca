"""Verification: restore a backup to a scratch volume and prove its content.

One verification restores the backup over a scratch volume created in the
service project (tenants never see it, nor pay for it), checksums the
restored image read-only on the volume cluster while writing a sparse raw
copy, checks the filesystem on that copy, deletes the scratch volume, and
records the verdict: in the journal, in the backup's ``cinderbak:verified``
mark, and in the metrics. Nothing but the scratch volume is ever deleted:
a backup that fails verification is reported, loudly, and kept.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from openstack.block_storage.v3.backup import Backup
from openstack.block_storage.v3.volume import Volume
from oslo_log import log as logging

from cinderbak import announce, fscheck, metrics, tenant, verification, waiting
from cinderbak.backups import parse_time
from cinderbak.discovery import SCRATCH_PREFIX, is_scratch
from cinderbak.journal import states, steps
from cinderbak.policy import Policy
from cinderbak.verification import (
    Candidate,
    LastVerified,
    SourceChecksum,
    Verdict,
)

if TYPE_CHECKING:
    from cinderbak.checksums import Checksummed, SourceChecksummer
    from cinderbak.cloud import Cloud
    from cinderbak.service import Parts

LOG = logging.getLogger(__name__)

RUN_PREFIX = "verify:"
PAGE_SIZE = 200
GIB = 1024**3
MIB = 1024**2


class VerifyError(RuntimeError):
    """Verification cannot start; nothing was created."""


@dataclasses.dataclass
class VerifyRow:
    """One verification, as the CLI and the run summary show it."""

    backup_id: str
    volume_id: str
    project_id: str
    policy: str
    consistency: str
    result: str = "failed"
    content: str = "not-read"
    filesystem: str = "not-checked"
    size_gb: int = 0
    restore_seconds: float | None = None
    restore_mib_s: float | None = None
    check_seconds: float | None = None
    check_mib_s: float | None = None
    problems: list[str] = dataclasses.field(default_factory=list)

    COLUMNS = (
        "backup_id",
        "volume_id",
        "policy",
        "consistency",
        "result",
        "content",
        "filesystem",
        "size_gb",
        "restore_seconds",
        "restore_mib_s",
        "check_seconds",
        "check_mib_s",
        "problems",
    )

    def as_tuple(self) -> tuple[object, ...]:
        return tuple(
            "; ".join(self.problems) if c == "problems" else getattr(self, c)
            for c in self.COLUMNS
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rate(size_bytes: int, seconds: float | None) -> float | None:
    if not seconds:
        return None
    return round(size_bytes / MIB / seconds, 1)


class Verifier:
    """Verifies backups one at a time, so one pass needs at most one
    scratch volume and one scratch copy."""

    def __init__(
        self,
        parts: Parts,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        checksummer = parts.checksummer
        if checksummer is None:
            raise VerifyError(
                "verification reads restored images on the volume cluster: "
                "configure [volume_cluster] conf (a read-only Ceph client)"
            )
        self.parts = parts
        self.conf = parts.conf
        self.cloud = parts.cloud
        self.journal = parts.journal
        self.checksummer: SourceChecksummer = checksummer
        self.stop = stop or threading.Event()
        self.clock = clock

    # -- choosing ----------------------------------------------------

    def our_backups(self, policy_name: str) -> Iterator[Any]:
        """Every backup of ours under this policy, in all projects."""
        storage = self.cloud.service.block_storage
        listed = self.cloud.call(
            lambda: list(
                storage.backups(
                    details=True, all_projects=True, limit=PAGE_SIZE
                )
            )
        )
        for backup in listed:
            metadata = dict(backup.metadata or {})
            if (
                tenant.is_ours(metadata, self.conf.deployment_id)
                and metadata.get(tenant.POLICY) == policy_name
            ):
                yield backup

    def verify_policy(
        self, policy: Policy, now: datetime.datetime
    ) -> list[VerifyRow]:
        """One pass: the policy's sample of backups, least recently
        verified first."""
        by_id = {b.id: b for b in self.our_backups(policy.name)}
        last = self._last_verifications(policy.name, by_id)
        candidates = [
            Candidate(
                backup_id=b.id,
                volume_id=b.volume_id,
                created_at=parse_time(b.created_at)
                or datetime.datetime.min.replace(tzinfo=datetime.UTC),
                status=b.status,
                last_verified=last[b.id],
            )
            for b in by_id.values()
        ]
        chosen = verification.choose(candidates, policy.verify_sample)
        LOG.info(
            "policy %s: verifying %d of %d backups (sample %s)",
            policy.name,
            len(chosen),
            len(candidates),
            policy.verify_sample,
        )
        rows = []
        for candidate in chosen:
            if self.stop.is_set():
                break
            rows.append(
                self.verify_backup(
                    by_id[candidate.backup_id],
                    policy.name,
                    now,
                    timeout=policy.verify_timeout,
                )
            )
        if rows:
            announce.run_ended(self.parts, RUN_PREFIX + policy.name, now)
        return rows

    def _last_verifications(
        self, policy_name: str, by_id: dict[str, Any]
    ) -> dict[str, LastVerified | None]:
        """When each backup was last verified: the journal's runs first,
        the tenant-editable marks only when the journal has none."""
        run_policy = RUN_PREFIX + policy_name
        runs = self.journal.last_final_runs(run_policy, by_id)
        recorded = {
            backup_id: LastVerified(
                (run.summary or {}).get("result") or str(run.state),
                run.finished_at,
            )
            for backup_id, run in runs.items()
            if run.finished_at is not None
        }
        knows = bool(recorded) or self.journal.has_runs(run_policy)
        if not knows and by_id:
            LOG.info(
                "policy %s: the journal holds no verification; choosing "
                "by the backups' %s marks",
                policy_name,
                tenant.VERIFIED,
            )
        return verification.last_verifications(
            by_id,
            recorded,
            {
                b: (v.metadata or {}).get(tenant.VERIFIED)
                for b, v in by_id.items()
            },
            journal_knows_policy=knows,
        )

    # -- one backup --------------------------------------------------

    def verify_backup(
        self,
        backup: Backup,
        policy_name: str,
        now: datetime.datetime,
        *,
        timeout: float,
    ) -> VerifyRow:
        """Restore, check, clean up and record one backup's verdict."""
        metadata = dict(backup.metadata or {})
        row = VerifyRow(
            backup_id=backup.id,
            volume_id=backup.volume_id,
            project_id=backup.project_id or "",
            policy=policy_name,
            consistency=metadata.get(tenant.CONSISTENCY, "unknown"),
            size_gb=backup.size or 0,
        )
        run = self.journal.begin_run(
            RUN_PREFIX + policy_name,
            backup.id,
            now,
            project_id=backup.project_id,
            attrs={"volume_id": backup.volume_id, "size_gb": backup.size},
        )
        if not run.created:
            row.result = "skipped"
            row.problems.append(f"verification already {run.state}")
            return row
        self.journal.start_run(run.id)
        expected, problem, trusted = self._expected(backup.id, metadata)
        if problem:
            row.problems.append(problem)
        digest = None
        fs = fscheck.FsCheck.not_checked("nothing restored")
        scratch_id = None
        try:
            scratch_id = self.scratch_volume(run.id, backup)
            self.restore_into(run.id, backup, scratch_id, row, timeout)
            digest, fs = self._read_and_check(scratch_id, backup, expected)
            row.check_seconds = round(digest.seconds, 1)
            row.check_mib_s = _rate(digest.checksum.size, digest.seconds)
        except Exception as exc:  # noqa: BLE001 - the verdict says it
            LOG.exception("backup %s: verification failed", backup.id)
            row.problems.append(f"restore or read failed: {exc}")
        finally:
            if scratch_id:
                self.delete_scratch_volume(run.id, scratch_id, row)
        verdict = verification.judge(
            expected=expected,
            restored_hexdigest=digest.checksum.hexdigest if digest else None,
            restored_algorithm=digest.checksum.algorithm if digest else None,
            filesystem=fs.result,
            filesystem_summary=fs.summary,
            consistency=row.consistency,
            at=datetime.datetime.now(datetime.UTC),
            trusted=trusted,
        )
        self._conclude(run.id, backup, row, verdict, fs)
        return row

    def _expected(
        self, backup_id: str, metadata: dict[str, str]
    ) -> tuple[SourceChecksum | None, str | None, bool]:
        """The source checksum taken at backup time, a problem reading it,
        and whether it is trusted: the journal's record first (tenants
        can edit a backup's metadata), else the mark, untrusted."""
        for step in reversed(
            self.journal.steps_of_resource(steps.CHECKSUM, backup_id)
        ):
            if step.state is states.DONE:
                d = step.details
                return (
                    SourceChecksum(d["algorithm"], d["size"], d["hexdigest"]),
                    None,
                    True,
                )
        try:
            return (
                verification.parse_checksum(metadata.get(tenant.CHECKSUM)),
                None,
                False,
            )
        except ValueError as exc:
            return None, f"backup {backup_id}: {exc}", False

    def scratch_volume(self, run_id: str, backup: Backup) -> str:
        """Create the scratch volume in our own project; journal first."""
        storage = self.cloud.service.block_storage
        step = self.journal.begin_step(
            run_id,
            steps.SCRATCH_CREATE,
            target=backup.id,
            details={"size_gb": backup.size},
        )
        volume = self.cloud.call(
            storage.create_volume,
            size=backup.size,
            name=SCRATCH_PREFIX + backup.id,
            description="temporary: restore target of a cinderbak "
            "verification, deleted after the check",
            metadata={tenant.OWNER: self.conf.deployment_id},
            idempotent=False,
        )
        self.journal.set_step_resource(step, volume.id)
        self._wait(
            storage.get_volume, volume.id, "available", self.clock() + 600
        )
        self.journal.complete_step(step)
        return volume.id

    def restore_into(
        self,
        run_id: str,
        backup: Backup,
        scratch_id: str,
        row: VerifyRow,
        timeout: float,
    ) -> None:
        storage = self.cloud.service.block_storage
        started = self.clock()
        self.cloud.call(
            storage.restore_backup,
            backup.id,
            volume_id=scratch_id,
            idempotent=False,
        )
        deadline = started + timeout
        self._wait(storage.get_volume, scratch_id, "available", deadline)
        self._wait(storage.get_backup, backup.id, "available", deadline)
        seconds = self.clock() - started
        row.restore_seconds = round(seconds, 1)
        row.restore_mib_s = _rate((backup.size or 0) * GIB, seconds)

    def _read_and_check(
        self,
        scratch_id: str,
        backup: Backup,
        expected: SourceChecksum | None,
    ) -> tuple[Checksummed, fscheck.FsCheck]:
        """Checksum the restored image, writing a sparse copy when there
        is room, and check the filesystem on the copy."""
        size = expected.size if expected else (backup.size or 0) * GIB
        scratch_dir = fscheck.scratch_dir(self.conf)
        os.makedirs(scratch_dir, exist_ok=True)
        free = shutil.disk_usage(scratch_dir).free
        if free < size:
            digest = self.checksummer.of_volume(scratch_id, size=size)
            return digest, fscheck.FsCheck.not_checked(
                f"{scratch_dir} has {free // GIB} GiB free, the copy may "
                f"need {size // GIB} GiB"
            )
        with tempfile.NamedTemporaryFile(
            dir=scratch_dir, prefix=f"verify-{backup.id}-", suffix=".raw"
        ) as copy:
            digest = self.checksummer.of_volume(
                scratch_id, size=size, sink=copy
            )
            copy.flush()
            fs = fscheck.check_filesystem(copy.name, conf=self.conf)
        return digest, fs

    def delete_scratch_volume(
        self, run_id: str, scratch_id: str, row: VerifyRow
    ) -> None:
        """Delete the scratch volume; an open step lets recovery retry."""
        step = self.journal.begin_step(
            run_id, steps.SCRATCH_DELETE, target=scratch_id, details={}
        )
        self.journal.set_step_resource(step, scratch_id)
        try:
            delete_scratch(self.cloud, scratch_id, stop=self.stop)
        except Exception as exc:  # noqa: BLE001 - retried by recovery
            LOG.warning(
                "scratch volume %s not deleted yet (%s); recovery retries",
                scratch_id,
                exc,
            )
            row.problems.append(f"scratch volume {scratch_id} left: {exc}")
            return
        self.journal.complete_step(step)

    def _conclude(
        self,
        run_id: str,
        backup: Backup,
        row: VerifyRow,
        verdict: Verdict,
        fs: fscheck.FsCheck,
    ) -> None:
        row.result = str(verdict.result)
        row.content = str(verdict.content)
        row.filesystem = verdict.filesystem
        row.problems = list(dict.fromkeys([*verdict.problems, *row.problems]))
        try:
            self._mark(backup.id, verdict.mark())
        except Exception as exc:  # noqa: BLE001 - the journal has it
            row.problems.append(f"could not mark the backup: {exc}")
        metrics.record_verification(row)
        summary = row.as_dict() | {"filesystem_detail": fs.summary}
        failed = verdict.result is verification.Result.FAILED
        self.journal.finish_run(
            run_id, states.FAILED if failed else states.SUCCEEDED, summary
        )
        announce.verification_ended(self.conf, row, run_id)
        if failed:
            LOG.error(
                "VERIFICATION FAILED: backup %s of volume %s (project %s, "
                "policy %s): %s. The backup is kept; restore from another "
                "backup and investigate the backup cluster.",
                backup.id,
                backup.volume_id,
                row.project_id,
                row.policy,
                "; ".join(row.problems),
            )
        else:
            LOG.info(
                "backup %s verified: %s (content %s, filesystem %s)%s",
                backup.id,
                row.result,
                row.content,
                row.filesystem,
                f": {'; '.join(row.problems)}" if row.problems else "",
            )

    def _mark(self, backup_id: str, value: str) -> None:
        """Merge ``cinderbak:verified`` into the backup's metadata (Cinder
        replaces the whole set on update)."""
        storage = self.cloud.service.block_storage
        current = self.cloud.call(storage.get_backup, backup_id)
        metadata = dict(current.metadata or {}) | {tenant.VERIFIED: value}
        self.cloud.call(
            storage.put,
            f"/backups/{backup_id}",
            json={"backup": {"metadata": metadata}},
            microversion="3.43",
        ).raise_for_status()

    def _wait(
        self,
        get: Callable[[str], Any],
        resource_id: str,
        status: str,
        deadline: float,
    ) -> Any:
        """Poll until ``status``; raise on an error status, or when the
        clock passes ``deadline``."""

        def reached() -> Any:
            current = self.cloud.call(get, resource_id)
            if current.status == status:
                return current
            if current.status.startswith("error"):
                raise RuntimeError(
                    f"{type(current).__name__.lower()} {resource_id} went "
                    f"to {current.status}"
                )
            return None

        return waiting.poll(
            reached,
            timeout=max(0.0, deadline - self.clock()),
            interval=self.conf.poll_interval,
            what=f"{resource_id} to be {status}",
            stop=self.stop,
        )


# A volume in these states cannot be deleted yet; a restore that was
# under way when its verifier died ends by itself.
_BUSY = frozenset({"creating", "restoring-backup", "downloading"})


def delete_scratch(
    cloud: Cloud,
    scratch_id: str,
    *,
    timeout: float = 900,
    interval: float = 2.0,
    stop: threading.Event | None = None,
) -> None:
    """Delete a scratch volume, after checking it is one, and wait until
    it is gone: its space and quota are free before the next one.

    Raise TimeoutError when it stays busy or deleting past ``timeout``.
    """
    storage = cloud.service.block_storage
    asked = False

    def gone() -> bool | None:
        nonlocal asked
        volume = cloud.call(
            storage.find_volume, scratch_id, ignore_missing=True
        )
        if volume is None:
            return True
        ours = cloud.service.current_project_id or ""
        if not isinstance(volume, Volume) or not is_scratch(volume, ours):
            raise RuntimeError(
                f"volume {scratch_id} is not a scratch volume of ours; "
                "left alone"
            )
        if not asked and volume.status not in _BUSY:
            cloud.call(storage.delete_volume, scratch_id, ignore_missing=True)
            asked = True
        return None

    waiting.poll(
        gone,
        timeout=timeout,
        interval=interval,
        what=f"scratch volume {scratch_id} to be deleted",
        stop=stop,
    )


def verify_one(
    parts: Parts, backup_id: str, now: datetime.datetime
) -> VerifyRow:
    """Verify one backup on demand (``cinderbak verify BACKUP``)."""
    verifier = Verifier(parts)
    storage = parts.cloud.service.block_storage
    backup = parts.cloud.call(storage.get_backup, backup_id)
    metadata = dict(backup.metadata or {})
    policy_name = metadata.get(tenant.POLICY) or "-"
    policy = parts.policies.get(policy_name)
    timeout = policy.verify_timeout if policy else 6 * 3600
    if not isinstance(backup, Backup):  # always, said for the checker
        raise VerifyError(f"backup {backup_id}: not a backup")
    if backup.status != "available":
        raise VerifyError(
            f"backup {backup.id} in project {backup.project_id} is "
            f"{backup.status}: only an available backup can be verified"
        )
    return verifier.verify_backup(backup, policy_name, now, timeout=timeout)
