"""One lock file for the cinderbak processes of this host.

Runs are journaled under the host's name (``[DEFAULT] host``), not under
the process that began them, so recovery takes every unfinished run of
the host, and every guest the journal shows frozen there, for a dead
process's. That holds only when no other process of the host is alive:
the daemon started while ``cinderbak run-once`` runs (or ``run-once``
next to the daemon) would thaw the guests the other froze a moment ago,
delete the snapshots it is still copying and settle runs still in
progress.

So every process holds a shared lock on ``$state_path/host-<host>.lock``
for its whole life, and the leftovers are taken (listed for recovery)
only under the exclusive lock: when no other process of the host is
alive. Right after, the lock is shared again, and the runs listed are
this process's to settle; another process can never take the exclusive
lock while this one lives, and takes them over if it dies.

POSIX record locks (``fcntl``) are what this needs: the kernel drops
them with the process, however it ends (``kill -9``), and a process
converts its own lock between shared and exclusive in place. The
inter-process locks of fasteners and oslo.concurrency give an exclusive
lock, or a reader and a writer lock as two objects; closing the file of
either would silently drop the other's lock (POSIX locks belong to the
process and file, not to the descriptor), so neither fits here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def lock_path(state_path: str, host: str) -> str:
    """The lock file of ``host``'s processes under ``state_path``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host) or "_"
    return os.path.join(state_path, f"host-{safe}.lock")


class LockUnavailable(ValueError):
    """The daemon cannot open its host's lock file: a configuration
    problem (the file's owner or mode), not one a restart would fix."""


class HostLock:
    """This process's hold on the host's lock file (none until asked)."""

    def __init__(self, state_path: str, host: str) -> None:
        self.host = host
        self.path = lock_path(state_path, host)
        os.makedirs(state_path, mode=0o750, exist_ok=True)
        self._fd = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660
        )
        self._share_with_group(state_path)

    def _share_with_group(self, state_path: str) -> None:
        """Let the state directory's group lock the file, whoever made
        it: root running a command before the daemon ever started would
        otherwise leave a file the daemon's user cannot open. The file
        holds nothing but the lock."""
        try:
            made = os.fstat(self._fd)
            if made.st_uid != os.geteuid():
                return
            os.fchmod(self._fd, 0o660)
            group = os.stat(state_path).st_gid
            if made.st_gid != group:
                os.fchown(self._fd, -1, group)
        except OSError as exc:
            LOG.debug("%s: group access not given: %s", self.path, exc)

    @classmethod
    def for_daemon(cls, state_path: str, host: str) -> HostLock:
        """The daemon's lock, or LockUnavailable saying how to fix it."""
        try:
            return cls(state_path, host)
        except OSError as exc:
            raise LockUnavailable(
                f"cannot open {lock_path(state_path, host)} "
                f"({exc.strerror or exc}); the daemon's user must be able to "
                "write it: run cinderbak commands as that user (e.g. sudo -u "
                "cinderbak cinderbak ...), or remove the file while no "
                "cinderbak process runs"
            ) from exc

    def share(self) -> None:
        """Hold the lock shared (waits only while a process of this host
        lists its leftovers: two journal reads)."""
        fcntl.lockf(self._fd, fcntl.LOCK_SH)

    def try_alone(self) -> bool:
        """Take the lock exclusive if no other process of this host holds
        it; return whether this process is now the host's only one. When
        not, the lock this process held (shared, or none) is kept as it
        was: a POSIX lock that cannot be converted is left unchanged."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    def close(self) -> None:
        """Drop the lock (the process's end does the same)."""
        os.close(self._fd)


def open_lock(state_path: str, host: str) -> HostLock | None:
    """The host's lock, or None (logged) where this user cannot create or
    open it: a command run by an operator who may read the configuration
    but not write the daemon's state directory."""
    try:
        return HostLock(state_path, host)
    except OSError as exc:
        LOG.warning(
            "cannot open %s (%s): this process will not take over the "
            "leftovers of others of host %s, and a daemon starting now "
            "would not see it",
            lock_path(state_path, host),
            exc.strerror or exc,
            host,
        )
        return None
