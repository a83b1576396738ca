"""The crash-consistent quiescer: always available, freezes nothing."""

from __future__ import annotations

from cinderbak.quiesce.base import Quiescer, ServerRef


class NoopQuiescer(Quiescer):
    """Freeze and thaw do nothing; copies are crash-consistent.

    For deployments without guest agents, or volumes not attached to a
    libvirt guest.
    """

    CAPABILITIES = frozenset()

    def freeze(self, server: ServerRef) -> int:
        return 0

    def thaw(self, server: ServerRef) -> int:
        return 0
