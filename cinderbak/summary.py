"""What a run did, per volume: the rows of the run summary."""

from __future__ import annotations

import dataclasses

COLUMNS = (
    "volume_id",
    "volume_name",
    "project_id",
    "policy",
    "mode",
    "kind",
    "status",
    "backup_id",
    "size_gb",
    "seconds",
    "consistency",
    "group_id",
    "freeze_seconds",
    "error",
    "notes",
)


@dataclasses.dataclass
class Outcome:
    """One volume's result in one run."""

    volume_id: str
    project_id: str
    policy: str
    status: str  # ok, error, skipped, timeout
    volume_name: str = ""
    mode: str = ""
    kind: str = ""
    backup_id: str | None = None
    size_gb: int | None = None
    seconds: float | None = None
    consistency: str = ""
    group_id: str | None = None
    freeze_seconds: float | None = None
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The fields as a dict, the notes a copy: every other field is
        immutable, so nothing is deep-copied (``dataclasses.asdict``
        copied each value recursively, once per finished backup)."""
        values: dict[str, object] = {
            name: getattr(self, name) for name in _FIELDS
        }
        values["notes"] = list(self.notes)
        return values

    def row(self) -> tuple[object, ...]:
        values = self.as_dict()
        values["notes"] = "; ".join(self.notes)
        return tuple(values[column] for column in COLUMNS)

    def log_line(self) -> str:
        text = (
            f"volume {self.volume_id} ({self.project_id}) policy "
            f"{self.policy}: {self.status}"
        )
        if self.backup_id:
            text += f", {self.kind} backup {self.backup_id}"
        if self.seconds is not None:
            text += f" in {self.seconds} s"
        if self.error:
            text += f": {self.error}"
        return text


_FIELDS = tuple(field.name for field in dataclasses.fields(Outcome))
