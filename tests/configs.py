"""Build cinderbak's parts from a config file, as the daemon would, for
tests and benchmarks that drive cinderbak in-process."""

from __future__ import annotations

import pathlib

from oslo_config import cfg

from cinderbak import opts, service


def conf_from(path: pathlib.Path | str) -> cfg.ConfigOpts:
    """Every option registered, values from ``path`` only: never from the
    default locations (/etc/cinderbak/...) of the machine running this."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(
        args=[f"--config-file={path}"],
        project="cinderbak",
        default_config_files=[],
    )
    return conf


def parts_from(path: pathlib.Path | str) -> service.Parts:
    """Connect as the daemon would with the config at ``path``; the
    caller closes the parts."""
    return service.build(conf_from(path))
