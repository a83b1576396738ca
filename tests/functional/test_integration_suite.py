"""The integration suite (tests/integration) against the local stack, with
the daemon started from the systemd unit's own ExecStart line, as a
devstack gate would run it against devstack@cinderbak."""

from __future__ import annotations

import configparser
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc/cinderbak/cinderbak-daemon.service"


def exec_start(config: pathlib.Path) -> list[str]:
    """The unit's ExecStart, with this venv's binary and the test config.

    Only the directory of the binary and the config path change; options
    and their order are the unit's.
    """
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    argv = shlex.split(unit["Service"]["ExecStart"])
    binary = pathlib.Path(sys.executable).with_name(pathlib.Path(argv[0]).name)
    assert binary.exists(), f"{binary} is not installed"
    return [
        str(binary),
        *(
            str(config) if arg == "/etc/cinderbak/cinderbak.conf" else arg
            for arg in argv[1:]
        ),
    ]


def test_integration_suite_against_the_daemon(
    stack, cinderbak_config, clouds_env, tmp_path
):
    policy = f"it-{uuid.uuid4().hex[:6]}"
    config = cinderbak_config(
        f"""
        [policy:{policy}]
        schedule = every 20s
        retention = last=2
        full_every = 1
        """
    )
    out = tmp_path / "daemon.out"
    with out.open("wb") as sink:
        daemon = subprocess.Popen(
            exec_start(config.path),
            env=clouds_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        suite = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                str(ROOT / "tests/integration"),
            ],
            env=dict(
                clouds_env,
                CINDERBAK_IT_ADMIN_CLOUD="localstack-admin",
                CINDERBAK_IT_TENANT_CLOUD="localstack-tenant-a",
                CINDERBAK_IT_POLICY=policy,
                CINDERBAK_IT_RUNS="4",
                CINDERBAK_IT_KEEP="2",
                CINDERBAK_IT_TIMEOUT="180",
                CINDERBAK_IT_RBD=os.environ.get(
                    "LOCALSTACK_JSON", str(stack.path)
                ),
            ),
            capture_output=True,
            text=True,
            timeout=1500,
            cwd=ROOT,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=120)
    assert suite.returncode == 0, (
        suite.stdout[-4000:]
        + suite.stderr[-2000:]
        + out.read_text(errors="replace")[-4000:]
    )
    assert " passed" in suite.stdout and "skipped" not in suite.stdout, (
        suite.stdout[-2000:]
    )
    assert code == 0, out.read_text(errors="replace")[-2000:]
