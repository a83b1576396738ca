"""`cinderbak-daemon` started with broken configurations, on the real stack.

Each case is a configuration an operator could write; the daemon must
exit before starting anything, with one line per problem naming section,
option and expected form, and no traceback: exit 2 when restarting cannot
help (systemd's RestartPreventExitStatus=2), 1 when the problem may go
away by itself (Keystone down).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.functional.test_daemon import Daemon, wait_until

POLICY = "[policy:daily]\nschedule = 0 3 * * *\n"


def run_daemon(config_path, env, *args):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cinderbak.cmd.daemon",
            "--config-file",
            str(config_path),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [
        line.split("cinderbak-daemon: ", 1)[1]
        for line in result.stderr.splitlines()
        if line.startswith("cinderbak-daemon: ")
    ]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result, lines


def service_auth(stack, password):
    return (
        "[service_auth]\nauth_type = password\n"
        f"auth_url = {stack.keystone_url}\nusername = cinderbak\n"
        f"password = {password}\nproject_name = service\n"
        "user_domain_name = Default\nproject_domain_name = Default\n"
    )


def test_check_config_says_ok_for_a_good_configuration(
    cinderbak_config, clouds_env, tmp_path
):
    config = cinderbak_config(POLICY)
    result, lines = run_daemon(config.path, clouds_env, "--check-config")
    assert (result.returncode, lines) == (0, [])
    assert result.stdout.strip() == "configuration OK"
    # A check makes no journal.
    assert not os.path.exists(tmp_path / "journal.sqlite")


def test_every_problem_of_a_start_at_once_exit_2(
    cinderbak_config, clouds_env, tmp_path
):
    config = cinderbak_config(
        POLICY
        + "retension = last=3\nquiesce = required\n"
        + "[policy:daily]\njitter = 5\n"
        + "[polcy:weekly]\nschedule = 0 3 * * 0\n"
        + "[policy:hourly]\nschedule = every 99999999999d\n"
        + "[expiry]\nmax_deletions_per_pass = -1\n"
        + "[metrics]\nport = 99999\n"
        + "[daemon]\naudit_interval = -1\n",
        poll_interval="0",
    )
    # The fixture writes poll_interval = 1 first; the later line wins.
    result, lines = run_daemon(config.path, clouds_env)
    assert result.returncode == 2, result.stderr
    assert [
        re.match(r"cannot start: (\[.+?\] \S+):", line)[1] for line in lines
    ] == [
        "[DEFAULT] poll_interval",
        "[daemon] audit_interval",
        "[expiry] max_deletions_per_pass",
        "[metrics] port",
        "[polcy:weekly] (section)",
        "[policy:daily] (section)",
        "[policy:daily] quiesce",
        "[policy:daily] retension",
        "[policy:daily] transfer_mode",
        "[policy:hourly] schedule",
    ]
    text = "\n".join(lines)
    assert "did you mean [policy:weekly]?" in text
    assert "did you mean 'retention'?" in text
    assert "expected an integer from 0 to 65535" in text
    assert "quiescer 'noop' cannot" in text
    assert not os.path.exists(tmp_path / "journal.sqlite")


@pytest.mark.parametrize(
    "case, exit_code, expected",
    [
        (
            "unknown cloud",
            2,
            "[cloud] cloud: Cloud no-such-cloud was not found; expected one "
            "of clouds.yaml's clouds: ",
        ),
        ("wrong password", 2, "[service_auth] password: Keystone refused"),
        (
            "keystone unreachable",
            1,
            "[service_auth] auth_url: cannot reach the cloud",
        ),
        ("ceph.conf missing", 2, "[volume_cluster] conf: cannot read "),
        ("keyring missing", 2, "[volume_cluster] keyring: cannot read "),
        ("state path unwritable", 2, "[DEFAULT] state_path: cannot write "),
        ("journal url", 2, "[journal] connection: not an SQLAlchemy URL"),
        ("journal driver", 2, "[journal] connection: cannot use "),
        ("corrupt sqlite", 2, "[journal] connection: sqlite:///"),
        ("unknown quiescer", 2, "[consistency] quiescer: no quiescer 'kvm'"),
        ("log file unwritable", 2, "[DEFAULT] log_file: cannot set up "),
    ],
)
def test_a_start_up_problem_is_one_line_not_a_traceback(
    stack, cinderbak_config, clouds_env, tmp_path, case, exit_code, expected
):
    cloud = ""
    extra = ""
    if case == "unknown cloud":
        cloud = "no-such-cloud"
    elif case == "wrong password":
        extra = service_auth(stack, "not-the-password")
    elif case == "keystone unreachable":
        extra = service_auth(stack, "x").replace(
            stack.keystone_url, "http://127.0.0.1:9/v3"
        )
    elif case == "ceph.conf missing":
        extra = f"[volume_cluster]\nconf = {tmp_path}/absent/ceph.conf\n"
    elif case == "keyring missing":
        extra = (
            f"[volume_cluster]\nconf = {stack.ceph('a').conf}\n"
            f"user = {stack.readonly_user.user}\n"
            f"keyring = {tmp_path}/absent.keyring\n"
        )
    elif case == "corrupt sqlite":
        (tmp_path / "journal.sqlite").write_bytes(b"not a database" * 100)
    elif case == "unknown quiescer":
        extra = "[consistency]\nquiescer = kvm\n"
    config = cinderbak_config(POLICY + extra)
    text = config.path.read_text()
    if cloud or extra.startswith("[service_auth]"):
        text = text.replace(
            "cloud = localstack-cinderbak", f"cloud = {cloud}" if cloud else ""
        )
    if case == "log file unwritable":
        text = text.replace(
            "[DEFAULT]\n", "[DEFAULT]\nlog_file = /proc/x.log\n"
        )
    if case == "state path unwritable":
        text = text.replace(
            f"state_path = {tmp_path}/state", "state_path = /proc/x"
        )
    if case == "journal url":
        text = text.replace(
            f"connection = sqlite:///{tmp_path}/journal.sqlite",
            "connection = journal on the fast disk",
        )
    if case == "journal driver":
        text = text.replace(
            f"connection = sqlite:///{tmp_path}/journal.sqlite",
            "connection = oracle+nosuchdriver://u:hunter2@db/j",
        )
    config.path.write_text(text)
    result, lines = run_daemon(config.path, clouds_env)
    assert result.returncode == exit_code, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("cannot start: " + expected), lines
    assert "hunter2" not in result.stderr
    assert "not-the-password" not in result.stderr


def test_the_cli_runs_the_same_check_before_connecting(
    cinderbak_config, tmp_path
):
    config = cinderbak_config(
        POLICY + "retension = 3\n[metrics]\nport = 99999\n"
    )
    rows = config.run("run-once", "--no-audit")
    assert rows == []
    assert config.last_returncode == 2
    lines = [
        line
        for line in config.last_stderr.splitlines()
        if line.startswith("cinderbak: [")
    ]
    assert lines == [
        "cinderbak: [metrics] port: '99999' is not valid (Should be less "
        "than or equal to 65535); expected an integer from 0 to 65535",
        "cinderbak: [policy:daily] retension: unknown option; did you mean "
        "'retention'?",
    ]
    assert "Traceback" not in config.last_stderr
    assert not (tmp_path / "journal.sqlite").exists()


def test_sighup_names_options_needing_a_restart_and_rejects_all_problems(
    cinderbak_config, clouds_env, tmp_path
):
    config = cinderbak_config(POLICY.replace("0 3 * * *", "every 1h"))
    original = config.path.read_text()
    daemon = Daemon(config, tmp_path / "daemon.out", clouds_env)
    try:
        wait_until(
            lambda: "1 policies" in daemon.output(),
            60,
            "the daemon to start",
            daemon=daemon,
        )
        config.path.write_text(
            original.replace("poll_interval = 1", "poll_interval = 3")
            + "[daemon]\naudit_interval = 600\n"
            + "[policy:weekly]\nschedule = 0 3 * * 0\n"
        )
        daemon.signal(signal.SIGHUP)
        restart = wait_until(
            lambda: [
                line
                for line in daemon.output().splitlines()
                if "take effect at the next restart" in line
            ],
            30,
            "the reload",
            daemon=daemon,
        )
        assert (
            "reload: [DEFAULT] poll_interval, [daemon] audit_interval "
            "changed in the file; not applied"
        ) in restart[0]
        wait_until(
            lambda: (
                "reload: added weekly; 2 policies in force" in daemon.output()
            ),
            30,
            "the new policy",
            daemon=daemon,
        )

        config.path.write_text(
            original + "[metrics]\nport = 99999\n[polcy:x]\n"
        )
        daemon.signal(signal.SIGHUP)
        rejected = wait_until(
            lambda: [
                line.split("reload rejected, ", 1)[1]
                for line in daemon.output().splitlines()
                if "reload rejected, " in line
            ],
            30,
            "the rejection",
            daemon=daemon,
        )
        assert len(rejected) == 2, rejected
        assert rejected[0] == (
            "the 2 policies in force are kept: [metrics] port: '99999' is "
            "not valid (Should be less than or equal to 65535); expected an "
            "integer from 0 to 65535"
        )
        assert rejected[1].startswith(
            "the 2 policies in force are kept: [polcy:x] (section): "
            f"unknown section ({config.path}:"
        )
        assert "did you mean [policy:x]?" in rejected[1]
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(30)
