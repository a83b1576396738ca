"""The journal: every step of a backup run, recorded before it acts.

See DESIGN.md. The public surface is re-exported here::

    from cinderbak import journal

    journal.register_opts(CONF)
    jr = journal.Journal(CONF)
    jr.upgrade()
    run = jr.begin_run("daily", volume_id, scheduled_at, project_id=pid)

States live in :mod:`~cinderbak.journal.states`, step kinds in
:mod:`~cinderbak.journal.steps`.
"""

from __future__ import annotations

from cinderbak.journal import states, steps
from cinderbak.journal.api import (
    Journal,
    NotFound,
    PolicySlot,
    RunEnd,
    RunHandle,
    RunRecord,
    StepRecord,
)
from cinderbak.journal.options import list_opts, register_opts
from cinderbak.journal.states import InvalidTransition, RunState, StepState
from cinderbak.journal.steps import StepKind

__all__ = [
    "InvalidTransition",
    "Journal",
    "NotFound",
    "PolicySlot",
    "RunEnd",
    "RunHandle",
    "RunRecord",
    "RunState",
    "StepKind",
    "StepRecord",
    "StepState",
    "list_opts",
    "register_opts",
    "states",
    "steps",
]
