"""The JSON bodies of a run's create requests (cinderbak.creating)."""

from cinderbak import creating


def test_backup_body_names_incremental_as_cinder_expects_on_create():
    body = creating.create_body(
        "backup",
        {"volume_id": "v", "name": "n", "is_incremental": 1, "force": True},
    )
    assert body == {
        "backup": {
            "volume_id": "v",
            "name": "n",
            "incremental": True,
            "force": True,
        }
    }


def test_snapshot_body_keeps_its_fields():
    attrs = {"volume_id": "v", "force": False, "metadata": {"a": "b"}}
    assert creating.create_body("snapshot", attrs) == {"snapshot": attrs}


def test_the_callers_attributes_are_not_changed():
    attrs = {"volume_id": "v", "is_incremental": False}
    creating.create_body("backup", attrs)
    assert attrs == {"volume_id": "v", "is_incremental": False}


def test_microversion_follows_what_the_create_asks():
    assert creating.microversion_for("backup", {"volume_id": "v"}) == "3.43"
    assert (
        creating.microversion_for(
            "backup", {"volume_id": "v", "availability_zone": "az1"}
        )
        == "3.51"
    )
    assert creating.microversion_for("snapshot", {"force": True}) == "3.43"
