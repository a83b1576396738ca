"""``cinderbak-daemon``: run the policies on their schedules until stopped.

Exit codes: 0 after a clean stop; 2 for a configuration the daemon
cannot run with (nothing was started; systemd should not retry); 1 for
anything else (the cloud unreachable or too old at start-up, a crash, a
stop that ran out of ``shutdown_timeout``).

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

from cinderbak import logs, metrics, opts, policy, scheduler, service
from cinderbak.cloud import CloudTooOld
from cinderbak.version import version_string

LOG = logging.getLogger(__name__)

SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def configure(conf: cfg.ConfigOpts, argv: Sequence[str]) -> cfg.ConfigOpts:
    """Register every option on ``conf`` and parse ``argv`` and files."""
    opts.register_opts(conf)
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


def reread_policies(argv: Sequence[str]) -> dict[str, policy.Policy]:
    """Parse the configuration files afresh; return their policies.

    A fresh ConfigOpts, so a file that fails to parse leaves the running
    configuration untouched. Raise PolicyConfigError or cfg.Error.
    """
    fresh = configure(cfg.ConfigOpts(), argv)
    try:
        return policy.load_policies(fresh)
    finally:
        fresh.clear()


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
    logs.setup(conf)
    try:
        parts = service.build(conf)
    except (policy.PolicyConfigError, cfg.Error, ValueError) as exc:
        LOG.error("cannot start: %s", exc)
        return EXIT_CONFIG
    except CloudTooOld as exc:
        # Also what an unreachable cinder-api looks like (no versions
        # announced): worth a restart by systemd, so not EXIT_CONFIG.
        LOG.error("cannot start: %s", exc)
        return EXIT_FAILURE
    except Exception:
        LOG.exception("cannot start")
        return EXIT_FAILURE
    try:
        metrics.serve(conf)
    except OSError as exc:
        LOG.error("cannot serve metrics: %s", exc)
        return EXIT_CONFIG
    daemon = scheduler.Daemon(parts, functools.partial(reread_policies, argv))
    daemon.start()
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
