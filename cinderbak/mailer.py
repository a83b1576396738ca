"""Mails a run report to the operator's recipients (``[report]``).

The standard library's smtplib and email do the work: plain SMTP, or
STARTTLS with certificate checks, and AUTH when a user is set. A mail
that cannot be sent is logged; it never fails a run.
"""

from __future__ import annotations

import email.message
import email.utils
import smtplib
import ssl

from oslo_config import cfg
from oslo_log import log as logging

from cinderbak import report

LOG = logging.getLogger(__name__)

GROUP = "report"
ALWAYS = "always"
FAILURE = "failure"

OPTS = [
    cfg.ListOpt(
        "recipients",
        default=[],
        help="Where run reports are mailed (none: no mail).",
    ),
    cfg.StrOpt(
        "when",
        default=FAILURE,
        choices=[
            (FAILURE, "only runs that failed or partly failed"),
            (ALWAYS, "every run"),
        ],
        help="Which run reports are mailed.",
    ),
    cfg.StrOpt(
        "mail_from",
        default="cinderbak@localhost",
        help="The From address of report mails.",
    ),
    cfg.HostAddressOpt("smtp_host", default="localhost", help="SMTP server."),
    cfg.PortOpt("smtp_port", default=25, help="SMTP server port."),
    cfg.BoolOpt(
        "smtp_starttls",
        default=False,
        help="Upgrade the connection with STARTTLS (the server's "
        "certificate is checked against the system's CAs).",
    ),
    cfg.StrOpt(
        "smtp_ca_file",
        help="CA bundle to check the SMTP server's certificate with "
        "(default: the system's).",
    ),
    cfg.StrOpt("smtp_user", help="SMTP AUTH user (none: no AUTH)."),
    cfg.StrOpt("smtp_password", secret=True, help="SMTP AUTH password."),
    cfg.FloatOpt(
        "smtp_timeout",
        default=30.0,
        min=1.0,
        help="Seconds to wait for the SMTP server.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(GROUP, OPTS)]


def wanted(conf: cfg.ConfigOpts, done: report.Report) -> bool:
    """Whether this report is to be mailed."""
    group = conf[GROUP]
    if not group.recipients:
        return False
    return group.when == ALWAYS or done.failed


def message(
    conf: cfg.ConfigOpts, done: report.Report
) -> email.message.EmailMessage:
    """Given a report, return its mail."""
    group = conf[GROUP]
    mail = email.message.EmailMessage()
    mail["Subject"] = done.subject()
    mail["From"] = group.mail_from
    mail["To"] = ", ".join(group.recipients)
    mail["Date"] = email.utils.formatdate(localtime=False)
    mail["Message-ID"] = email.utils.make_msgid(domain="cinderbak")
    mail["X-Cinderbak-Run"] = done.run_id
    mail.set_content(report.render(done))
    return mail


def send(conf: cfg.ConfigOpts, done: report.Report) -> bool:
    """Mail the report if ``[report]`` wants it; return whether it went."""
    if not wanted(conf, done):
        return False
    group = conf[GROUP]
    try:
        with smtplib.SMTP(
            group.smtp_host, group.smtp_port, timeout=group.smtp_timeout
        ) as smtp:
            if group.smtp_starttls:
                context = ssl.create_default_context(cafile=group.smtp_ca_file)
                smtp.starttls(context=context)
            if group.smtp_user:
                smtp.login(group.smtp_user, group.smtp_password or "")
            smtp.send_message(message(conf, done))
    except (OSError, smtplib.SMTPException) as exc:
        LOG.error(
            "run %s: report not mailed to %s via %s:%d: %s",
            done.run_id,
            ", ".join(group.recipients),
            group.smtp_host,
            group.smtp_port,
            exc,
        )
        return False
    LOG.info(
        "run %s: report mailed to %s", done.run_id, ", ".join(group.recipients)
    )
    return True
