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


# -- whitespace and case: reported per volume, never ignored --------------


@pytest.mark.parametrize(
    "value",
    ["daily ", " daily", "daily\t", "daily\n", "daily\xa0", "da\u200bily"],
)
def test_policy_value_must_be_exact_and_says_what_was_meant(value):
    with pytest.raises(MetadataError) as err:
        tenant.parse_volume_metadata(
            VOL, {"cinderbak:policy": value}, POLICIES
        )
    message = str(err.value)
    assert message.startswith(
        f"volume {VOL}: metadata cinderbak:policy={value!r} is invalid; "
        "expected exactly a policy name ('daily'), without surrounding "
        "whitespace or invisible characters"
    )
    assert "policies: daily, weekly" in message


def test_unknown_policy_with_whitespace_gets_no_guess():
    with pytest.raises(MetadataError) as err:
        tenant.parse_volume_metadata(
            VOL, {"cinderbak:policy": " nightly "}, POLICIES
        )
    assert "exactly a policy name, without" in str(err.value)


@pytest.mark.parametrize(
    "key",
    [
        "CinderBak:policy",
        "CINDERBAK:POLICY",
        " cinderbak:policy",
        "cinderbak:policy ",
        "cinderbak: policy",
        "cinderbak:policy\xa0",
        "Cinderbak:Quiesce",
    ],
)
def test_key_spelled_another_way_is_reported_with_the_exact_key(key):
    canonical = "".join(key.split()).lower()
    with pytest.raises(MetadataError) as err:
        tenant.parse_volume_metadata(VOL, {key: "daily"}, POLICIES)
    assert err.value.key == key
    message = str(err.value)
    assert f"expected the key written exactly {canonical!r}" in message
    # Spaces in the key are visible in the message.
    shown = key if key == key.strip() and key.isprintable() else repr(key)
    assert f"metadata {shown}='daily'" in message


def test_a_variant_next_to_a_valid_opt_in_is_still_reported():
    with pytest.raises(MetadataError) as err:
        tenant.parse_volume_metadata(
            VOL,
            {"cinderbak:policy": "daily", "CinderBak:quiesce": "off"},
            POLICIES,
        )
    assert err.value.key == "CinderBak:quiesce"


def test_only_keys_that_look_like_ours_bring_a_volume_to_the_audit():
    assert tenant.mentions_us({" CinderBak:policy": "daily"})
    assert tenant.mentions_us({"cinderbak:polcy": "daily"})
    assert not tenant.mentions_us({"backup": "cinderbak:daily"})
    assert not tenant.mentions_us({})
