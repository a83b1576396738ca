"""Every option cinderbak reads, for registration and the sample config.

Options are declared beside the code that uses them; this module only
collects them, for ``oslo-config-generator --namespace cinderbak`` (the
``oslo.config.opts`` entry point) and for registering them at start-up.
"""

from __future__ import annotations

import itertools

from oslo_config import cfg

from cinderbak import (
    backup_cluster,
    backupfs,
    cloud,
    consistency,
    coordination,
    dr_drill,
    dr_store,
    expiry,
    fscheck,
    journal,
    limits,
    logs,
    mailer,
    metrics,
    policy,
    scheduler,
    volume_cluster,
    workflow,
)
from cinderbak.quiesce import libvirt as libvirt_quiescer

# oslo.log's options come from its own generator namespace (see
# etc/cinderbak/cinderbak-config-generator.conf); they are registered here.
_MODULES = (
    workflow,
    cloud,
    limits,
    journal,
    expiry,
    consistency,
    volume_cluster,
    backup_cluster,
    dr_store,
    dr_drill,
    backupfs,
    fscheck,
    metrics,
    mailer,
    libvirt_quiescer,
    scheduler,
    policy,
    coordination,
)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Return (group, options) pairs, grouped, for the generator."""
    pairs = itertools.chain.from_iterable(m.list_opts() for m in _MODULES)
    merged: dict[str, list[cfg.Opt]] = {}
    for group, group_opts in pairs:
        merged.setdefault(group, []).extend(group_opts)
    return list(merged.items())


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every fixed option group (policies are found later)."""
    logs.register_opts(conf)
    for module in _MODULES:
        register = getattr(module, "register_opts", None)
        if register is not None:
            register(conf)
