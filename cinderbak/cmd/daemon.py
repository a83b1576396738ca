"""``cinderbak-daemon``: run the policies on their schedules until stopped.

Exit codes: 0 after a clean stop; 2 for a configuration the daemon
cannot run with (nothing was started; systemd should not retry, see
``RestartPreventExitStatus=2`` in the unit); 1 for anything else (the
cloud or the journal's database unreachable at start-up, a crash, a stop
that ran out of ``shutdown_timeout``).

Before anything starts, :mod:`cinderbak.config_check` checks the whole
configuration and what it points at and prints every problem, one line
each; ``--check-config`` does only that (exit 0 or 2).

Signals are not handled by a handler: SIGTERM, SIGINT and SIGHUP are
blocked before any thread exists (threads inherit the block) and the main
thread receives them with ``sigwait``. A Python handler runs on the main
thread between bytecodes, and setting an ``Event`` from one can deadlock
against the main thread's own wait on it; ``sigwait`` has no such window
and needs no loop that sleeps.
"""

from __future__ import annotations

import faulthandler
import functools
import logging as std_logging
import os
import signal
import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging
from tooz import coordination as tooz_coordination

from cinderbak import (
    config_check,
    logs,
    metrics,
    opts,
    policy,
    recovery,
    scheduler,
    service,
    systemd,
)
from cinderbak.cloud import CloudTooOld
from cinderbak.cmd import settle_start_up
from cinderbak.version import version_string

LOG = logging.getLogger(__name__)

SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

CLI_OPTS = [
    cfg.BoolOpt(
        "check-config",
        default=False,
        help="Check the configuration and what it points at (cloud, "
        "journal, volume cluster), print every problem or "
        "'configuration OK', and exit: 0 when fine, 2 otherwise.",
    ),
]


def configure(conf: cfg.ConfigOpts, argv: Sequence[str]) -> cfg.ConfigOpts:
    """Register every option on ``conf`` and parse ``argv`` and files."""
    opts.register_opts(conf)
    conf.register_cli_opts(CLI_OPTS)
    # Registered here too until opts.py lists the module; registering
    # the same options twice is harmless.
    scheduler.register_opts(conf)
    conf(
        args=list(argv),
        project="cinderbak",
        prog="cinderbak-daemon",
        version=version_string(),
    )
    return conf


class ReloadedPolicies(dict[str, policy.Policy]):
    """The policies of a reload, with the fixed options read alongside,
    so the reload can say which changes need a restart."""

    def __init__(
        self,
        policies: dict[str, policy.Policy],
        options: dict[tuple[str, str], object],
    ) -> None:
        super().__init__(policies)
        self.options = options


def reread_policies(argv: Sequence[str]) -> ReloadedPolicies:
    """Parse and check the configuration files afresh; return their
    policies and fixed options.

    A fresh ConfigOpts, so a file that fails to parse leaves the running
    configuration untouched. The checks are those of start-up without
    reaching the cloud (its connection is kept). Raise ConfigProblems,
    PolicyConfigError or cfg.Error.
    """
    fresh = configure(cfg.ConfigOpts(), argv)
    try:
        problems = config_check.validate(fresh, reach=False)
        if problems:
            raise config_check.ConfigProblems(problems)
        return ReloadedPolicies(
            policy.load_policies(fresh), config_check.option_values(fresh)
        )
    finally:
        fresh.clear()


def report(problems: Sequence[config_check.Problem], prefix: str) -> None:
    """One line per problem on stderr (the systemd journal)."""
    for problem in problems:
        sys.stderr.write(f"cinderbak-daemon: {prefix}{problem}\n")
    sys.stderr.flush()


HOST_WAIT_STEP = 1.0
"""Seconds between two looks at the host's lock while another process
of the host is alive."""


def wait_for_host(parts: service.Parts) -> recovery.Leftovers | None:
    """This host's leftovers, listed once no other cinderbak process of
    the host is alive (:func:`cinderbak.recovery.take_leftovers`); None
    when SIGTERM or SIGINT comes first.

    A command such as ``run-once`` on this host holds the host's lock
    for its life: its guests are frozen and its snapshots in use, and
    recovery would take them for a dead process's. The daemon waits for
    it, telling the log every minute and systemd, whose start timeout it
    extends meanwhile. A second daemon given this ``[DEFAULT] host``
    waits here as long as the first runs.
    """
    lock = parts.host_lock
    if lock is None:  # service.build opens it for a daemon, or fails
        raise RuntimeError("the host's lock is not open")
    waited, told = 0.0, None
    while (leftovers := recovery.take_leftovers(parts)) is None:
        if told is None or waited - told >= 60:
            told = waited
            LOG.warning(
                "another cinderbak process of host %s is running (it holds "
                "%s: a command such as run-once, or a second daemon with "
                "this host name); this daemon starts when it ends (waited "
                "%.0f s)",
                parts.journal.host,
                lock.path,
                waited,
            )
            systemd.notify(
                f"EXTEND_TIMEOUT_USEC={int(120 * 1e6)}",
                status="waiting for another cinderbak process of this host",
            )
        signum = signal.sigtimedwait(SIGNALS, HOST_WAIT_STEP)
        if signum is not None and signum.si_signo != signal.SIGHUP:
            LOG.info("stopped before starting")
            return None
        waited += HOST_WAIT_STEP
    return leftovers


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    # SIGUSR1 prints every thread's stack to stderr: what a hung run waits
    # for, without stopping anything.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    conf = cfg.CONF
    try:
        configure(conf, argv)
    except cfg.Error as exc:
        sys.stderr.write(f"cinderbak-daemon: {exc}\n")
        return EXIT_CONFIG
    settle_start_up()
    try:
        logs.setup(conf)
    except (OSError, ValueError) as exc:  # log_file, log_dir, log_config
        report(
            [
                config_check.Problem(
                    "DEFAULT",
                    "log_file",
                    f"cannot set up logging ({exc}); expected a log file "
                    "or directory the daemon's user can write",
                )
            ],
            "cannot start: ",
        )
        return EXIT_CONFIG
    try:
        problems = config_check.validate(conf, reach=True)
    except (OSError, ValueError) as exc:  # a file gone since it was parsed
        report(
            [config_check.Problem("DEFAULT", "config_file", str(exc))],
            "cannot start: ",
        )
        return EXIT_CONFIG
    report(problems, "" if conf.check_config else "cannot start: ")
    if conf.check_config:
        if not problems:
            print("configuration OK")
        return EXIT_CONFIG if problems else EXIT_OK
    if problems:
        # A service not up yet is worth a restart; a wrong value is not.
        lasting = [p for p in problems if not p.transient]
        return EXIT_CONFIG if lasting else EXIT_FAILURE
    try:
        parts = service.build(conf, daemon=True)
    except (policy.PolicyConfigError, cfg.Error, ValueError) as exc:
        LOG.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except CloudTooOld as exc:
        # Also what an unreachable cinder-api looks like (no versions
        # announced): worth a restart by systemd, so not EXIT_CONFIG.
        LOG.error("cannot start: %s", exc)
        return EXIT_FAILURE
    except tooz_coordination.ToozError as exc:
        # The backend away: started alone, this daemon would do every
        # other daemon's share too. systemd retries.
        LOG.error(
            "cannot start: cannot join the group at [coordination] "
            "backend_url: %s",
            exc,
        )
        return EXIT_FAILURE
    except Exception:
        LOG.exception("cannot start")
        return EXIT_FAILURE
    try:
        metrics.serve(conf)
        metrics.CLOCKS.watch(conf, parts.journal, lambda: parts.policies)
    except OSError as exc:
        LOG.error("cannot serve metrics: %s", exc)
        return EXIT_CONFIG
    leftovers = wait_for_host(parts)
    if leftovers is None:
        parts.close()
        return EXIT_OK
    daemon = scheduler.Daemon(parts, functools.partial(reread_policies, argv))
    daemon.start(leftovers)
    while (signum := signal.sigwait(SIGNALS)) == signal.SIGHUP:
        LOG.info("SIGHUP: reloading the policies")
        daemon.reload()
    LOG.info("%s: stopping", signal.Signals(signum).name)
    if daemon.shutdown():
        return EXIT_OK
    # Runs that did not reach a safe point in time are in pool threads,
    # which the interpreter would wait for at exit. Their steps are in
    # the journal (written before each action), so leaving now is as safe
    # as a kill -9, which recovery is built and tested for.
    std_logging.shutdown()
    os._exit(EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
