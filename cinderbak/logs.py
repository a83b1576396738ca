"""Logging set-up through oslo.log, shared by the daemon and the CLI."""

from __future__ import annotations

from oslo_config import cfg
from oslo_log import log as logging

DOMAIN = "cinderbak"
# Libraries whose INFO lines drown ours; operators can raise them again
# with default_log_levels.
QUIET = (
    "keystoneauth=WARN",
    "openstack=WARN",
    "urllib3=WARN",
    "stevedore=WARN",
    "apscheduler=WARN",
    "alembic=WARN",
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    logging.register_options(conf)
    logging.set_defaults(
        default_log_levels=logging.get_default_log_levels() + list(QUIET)
    )


def setup(conf: cfg.ConfigOpts) -> None:
    logging.setup(conf, DOMAIN)
