"""Logging set-up through oslo.log, shared by the daemon and the CLI."""

from __future__ import annotations

import logging as std_logging

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak.escape import escape

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


class EscapeFilter(std_logging.Filter):
    """Escapes the text of every log line (its tracebacks aside): log
    lines carry volume names and metadata values, which tenants choose,
    and a newline or an escape sequence in them must not forge a line or
    rewrite the operator's terminal."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it
            return True
        escaped = escape(message)
        if escaped != message or record.args:
            record.msg, record.args = escaped, None
        return True


def setup(conf: cfg.ConfigOpts) -> None:
    logging.setup(conf, DOMAIN)
    for handler in std_logging.getLogger().handlers:
        if not any(isinstance(f, EscapeFilter) for f in handler.filters):
            handler.addFilter(EscapeFilter())
