"""A listed backup (decoded JSON) read as the planner's BackupInfo: the
positional fast construction gives what the field rules say."""

import datetime

from hypothesis import given
from hypothesis import strategies as st

from cinderbak import backups, tenant
from cinderbak.chains import BackupInfo

UTC = datetime.UTC
HOLDS = st.sampled_from(
    ["true", " Yes ", "1", "false", "no", "0", "", "maybe", "TRUE"]
)
STAMPS = st.sampled_from(
    [None, "", "2026-11-22T03:09:35.919827", "2026-11-23T00:00:00"]
)


@st.composite
def listed(draw):
    metadata = {}
    if draw(st.booleans()):
        metadata[tenant.OWNER] = draw(st.sampled_from(["bench", "other"]))
    if draw(st.booleans()):
        metadata[tenant.HOLD] = draw(HOLDS)
    item = {
        "id": draw(st.uuids()).hex,
        "status": draw(st.sampled_from(["available", "error", None])),
        "created_at": draw(STAMPS),
        "data_timestamp": draw(STAMPS),
        "is_incremental": draw(st.sampled_from([True, False, None])),
        "has_dependent_backups": draw(st.sampled_from([True, False, None])),
        "metadata": metadata if draw(st.booleans()) else None,
    }
    return {
        k: v for k, v in item.items() if v is not None or draw(st.booleans())
    }


@given(listed())
def test_fields_follow_their_rules(item):
    info = backups.info_from_dict(item, "bench")
    metadata = item.get("metadata") or {}
    try:
        held = tenant.is_held(item["id"], metadata)
    except tenant.MetadataError:
        held = True  # an unclear hold keeps the backup
    created = backups.parse_time(item.get("created_at"))
    assert info == BackupInfo(
        id=item["id"],
        created_at=created,
        data_timestamp=backups.parse_time(item.get("data_timestamp"))
        or created,
        is_incremental=bool(item.get("is_incremental")),
        status=item.get("status") or "",
        ours=tenant.is_ours(metadata, "bench"),
        held=held,
        has_dependent_backups=bool(item.get("has_dependent_backups")),
    )
    assert info.parent_id is None


def test_an_unclear_hold_keeps_the_backup():
    item = {"id": "b", "metadata": {tenant.HOLD: "later"}}
    assert backups.info_from_dict(item, "bench").held
