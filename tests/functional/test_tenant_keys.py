"""Tenants' near-miss opt-ins on the real stack: reported, never silent.

Cinder's metadata filter matches key and value exactly, so these volumes
never reach their policy's run; the audit of `cinderbak run-once` must
report each one, and the operator's terminal must show their strings
escaped.
"""

from __future__ import annotations

import subprocess
import uuid

from tests.functional.conftest import CINDERBAK


def test_whitespace_and_case_variants_are_each_reported_by_the_audit(
    alice, make_volume, cinderbak_config
):
    policy = f"keys-{uuid.uuid4().hex[:8]}"
    cinderbak = cinderbak_config(f"[policy:{policy}]\nschedule = every 1h\n")
    cases = {
        "trailing space": {"cinderbak:policy": f"{policy} "},
        "tab": {"cinderbak:policy": f"{policy}\t"},
        "newline": {"cinderbak:policy": f"{policy}\n"},
        "no-break space": {"cinderbak:policy": f"\xa0{policy}"},
        "key case": {"CinderBak:policy": policy},
        "key upper": {"CINDERBAK:POLICY": policy.upper()},
        "key space": {" cinderbak:policy": policy},
        "escape in value": {"cinderbak:policy": "\x1b]0;pwned\x07"},
    }
    volumes = {
        case: make_volume(alice, metadata=metadata)
        for case, metadata in cases.items()
    }
    # What Cinder stored is what the tenant wrote: nothing normalised.
    for case, volume in volumes.items():
        stored = alice.block_storage.get_volume(volume.id).metadata
        assert stored == cases[case], case

    rows = cinderbak.run("run-once", "--policy", policy)
    by_volume = {row["volume_id"]: row for row in rows}
    for case, volume in volumes.items():
        row = by_volume.get(volume.id)
        assert row is not None, f"{case}: not reported"
        assert row["status"] == "error", row
        error = row["error"]
        assert f"volume {volume.id}: metadata " in error
        if case.startswith("key"):
            assert "expected the key written exactly 'cinderbak:policy'" in (
                error
            ), error
        elif case == "escape in value":
            assert "'\\x1b]0;pwned\\x07' is invalid" in error, error
            assert "exactly a policy name, without" in error, error
        else:
            assert f"exactly a policy name ('{policy}')" in error, error
    assert cinderbak.last_returncode == 1

    # The table an operator reads shows the tenant's strings escaped.
    table = subprocess.run(
        [
            str(CINDERBAK),
            "--config-file",
            str(cinderbak.path),
            "run-once",
            "--policy",
            policy,
            "-f",
            "value",
            "-c",
            "volume_id",
            "-c",
            "policy",
        ],
        env=cinderbak.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "\x1b" not in table.stdout + table.stderr
    assert "\x07" not in table.stdout + table.stderr
    escaped = volumes["escape in value"].id + " \\x1b]0;pwned\\x07"
    assert escaped in table.stdout.splitlines()
