"""The lock file the cinderbak processes of one host share.

Real processes and a real file: what matters is what the kernel does
when a process holds the lock, converts it, or is killed.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from cinderbak.hostlock import HostLock, LockUnavailable

HOLD = """
import sys
from cinderbak.hostlock import HostLock
lock = HostLock(sys.argv[1], sys.argv[2])
print(getattr(lock, sys.argv[3])(), flush=True)
sys.stdin.read()
"""


def _holder(state_path, how: str, answer: str = "None"):
    """A process of ``host-a`` that called ``how`` on its lock and got
    ``answer``; it lives until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state_path), "host-a", how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == answer
    return proc


def test_alone_only_when_no_other_process_of_the_host_lives(tmp_path):
    other = _holder(tmp_path, "share")
    lock = HostLock(str(tmp_path), "host-a")
    try:
        assert not lock.try_alone()
        lock.share()  # commands run side by side
        assert not lock.try_alone()
        # A conversion that failed kept this process's shared lock.
        other.send_signal(signal.SIGKILL)
        other.wait(30)
        third = _holder(tmp_path, "try_alone", "False")
        third.stdin.close()  # type: ignore[union-attr]
        third.wait(30)
        # Another host's processes are not this host's.
        assert HostLock(str(tmp_path), "host-b").try_alone()
    finally:
        other.send_signal(signal.SIGKILL)  # kill -9 drops its lock
        other.wait(30)
    assert lock.try_alone()
    lock.share()
    lock.close()


def test_a_process_alone_keeps_others_waiting_until_it_shares(tmp_path):
    alone = _holder(tmp_path, "try_alone", "True")
    lock = HostLock(str(tmp_path), "host-a")
    try:
        assert not lock.try_alone()
    finally:
        alone.stdin.close()  # type: ignore[union-attr]
        alone.wait(30)
    assert lock.try_alone()
    lock.close()


def test_a_host_name_is_made_safe_for_a_file_name(tmp_path):
    lock = HostLock(str(tmp_path), "../evil/host")
    assert lock.path.startswith(str(tmp_path) + "/host-")
    assert "/" not in lock.path[len(str(tmp_path)) + 1 :]
    lock.close()


def test_the_lock_file_is_the_state_directory_groups(tmp_path):
    # Root running a command before the daemon ever started must not
    # leave a file the daemon's user (the directory's group) cannot lock.
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, -1, 4242)
    lock = HostLock(str(state), "host-a")
    made = os.stat(lock.path)
    assert made.st_gid == 4242
    assert stat.S_IMODE(made.st_mode) == 0o660
    lock.close()


def test_a_daemon_that_cannot_open_its_lock_says_how_to_fix_it(tmp_path):
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")
    with pytest.raises(LockUnavailable, match="the daemon's user must"):
        HostLock.for_daemon(str(not_a_directory), "host-a")
