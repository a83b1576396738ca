"""The tenant metadata contract, as tenants will meet it."""

import pytest

from cinderbak import tenant
from cinderbak.tenant import MetadataError, QuiesceMode

POLICIES = {"daily", "weekly"}
VOL = "6f1d1b0e-0000-4000-8000-000000000001"


def test_volume_without_our_keys_is_not_opted_in():
    assert tenant.parse_volume_metadata(VOL, {"app": "db"}, POLICIES) is None


def test_policy_opts_in_with_policy_default_quiesce():
    opt_in = tenant.parse_volume_metadata(
        VOL, {"cinderbak:policy": "daily", "app": "db"}, POLICIES
    )
    assert opt_in == tenant.OptIn(VOL, "daily", None)


def test_tenant_can_override_quiesce_case_insensitively():
    opt_in = tenant.parse_volume_metadata(
        VOL,
        {"cinderbak:policy": "weekly", "cinderbak:quiesce": " Required "},
        POLICIES,
    )
    assert opt_in.quiesce is QuiesceMode.REQUIRED


def test_unknown_policy_names_volume_key_and_choices():
    with pytest.raises(MetadataError) as err:
        tenant.parse_volume_metadata(
            VOL, {"cinderbak:policy": "nope"}, POLICIES
        )
    message = str(err.value)
    assert VOL in message
    assert "cinderbak:policy='nope'" in message
    assert "daily, weekly" in message
    assert err.value.key == "cinderbak:policy"


def test_malformed_quiesce_names_the_choices():
    with pytest.raises(MetadataError, match="required, preferred, off"):
        tenant.parse_volume_metadata(
            VOL,
            {"cinderbak:policy": "daily", "cinderbak:quiesce": "maybe"},
            POLICIES,
        )


@pytest.mark.parametrize(
    "key, hint",
    [
        ("cinderbak:polcy", "one of cinderbak:last_backup"),
        ("cinderbak:hold", "only on a backup"),
    ],
)
def test_keys_outside_the_contract_are_errors(key, hint):
    with pytest.raises(MetadataError, match=hint) as err:
        tenant.parse_volume_metadata(
            VOL, {"cinderbak:policy": "daily", key: "x"}, POLICIES
        )
    assert err.value.key == key


def test_quiesce_without_policy_is_an_error_not_a_silent_no():
    with pytest.raises(MetadataError, match="together with cinderbak:policy"):
        tenant.parse_volume_metadata(
            VOL, {"cinderbak:quiesce": "off"}, POLICIES
        )


def test_our_written_back_keys_are_allowed():
    metadata = {
        "cinderbak:policy": "daily",
        "cinderbak:last_backup": "abc 2026-11-24T03:00:00Z",
        "cinderbak:last_status": "ok",
    }
    assert tenant.parse_volume_metadata(VOL, metadata, POLICIES)


@pytest.mark.parametrize(
    "value, held", [("true", True), ("TRUE", True), ("false", False)]
)
def test_hold_values(value, held):
    assert tenant.is_held("b1", {"cinderbak:hold": value}) is held


def test_unclear_hold_is_reported_so_the_caller_keeps_the_backup():
    with pytest.raises(MetadataError, match="true or false"):
        tenant.is_held("b1", {"cinderbak:hold": "forever"})


def test_owner_mark_must_match_this_deployment():
    assert tenant.is_ours({"cinderbak:owner": "east"}, "east")
    assert not tenant.is_ours({"cinderbak:owner": "west"}, "east")
    assert not tenant.is_ours({}, "east")


def test_status_text_fits_cinders_255_characters():
    assert tenant.status_text(None) == "ok"
    long = tenant.status_text("x" * 400)
    assert len(long) == 255 and long.startswith("error: x")
